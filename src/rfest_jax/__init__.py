"""JAX/Flax backend of rfest (entry point ``jax``): ``jax.vjp`` on a linearized jaxpr.

Accepted models: a function ``f(x)`` of a channels-last batch (pass ``backend="jax"``),
a Flax NNX module, or a Flax Linen ``(module, variables)`` pair.
"""

from rfest_jax._models import MODEL_OUTPUT
from rfest_jax._provider import JaxGradientProvider, provider

__all__ = ["MODEL_OUTPUT", "JaxGradientProvider", "provider"]
