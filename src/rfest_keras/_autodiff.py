"""One vector-Jacobian product, in whichever framework runs Keras.

Keras has no backend-neutral gradient op, so each framework's own is used:
``tf.GradientTape``, ``jax.vjp``, ``torch.autograd.grad``. The framework is imported
inside its adapter only; ``precision`` gives JAX 64-bit types for the duration of a
call (``jax.enable_x64`` is scoped, the global flag is not changed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

__all__ = ["precision", "supported", "to_numpy", "vjp"]

Function = Callable[[Any], Any]


def vjp(
    function: Function, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray]
) -> np.ndarray:
    """``cotangent(y.shape)ᵀ · ∂function(x)/∂x`` as a float64 numpy array shaped like ``x``."""
    return _ADAPTERS[keras.backend.backend()](function, x, cotangent)


def to_numpy(variable: Any) -> np.ndarray:
    """A copy of a Keras variable's value (``np.array(variable)`` warns under NumPy 2)."""
    value = variable.value
    if keras.backend.backend() == "tensorflow":
        return np.array(value.numpy())
    if keras.backend.backend() == "torch":
        return np.array(value.detach().cpu().numpy())
    return np.array(value)


def supported() -> bool:
    """Whether the framework running Keras has an adapter here."""
    return keras.backend.backend() in _ADAPTERS


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """Let the framework compute in ``dtype`` inside the block (JAX needs x64 enabled)."""
    if keras.backend.backend() == "jax" and dtype == "float64":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def _tensorflow(
    function: Function, x: np.ndarray, cotangent: Callable[..., np.ndarray]
) -> np.ndarray:
    import tensorflow as tf

    tensor = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        y = function(tensor)
    seed = tf.convert_to_tensor(cotangent(tuple(y.shape)), dtype=y.dtype)
    grad = tape.gradient(y, tensor, output_gradients=seed)
    return np.zeros(x.shape) if grad is None else np.asarray(grad.numpy(), dtype=np.float64)


def _jax(function: Function, x: np.ndarray, cotangent: Callable[..., np.ndarray]) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    y, pullback = jax.vjp(function, jnp.asarray(x))
    (grad,) = pullback(jnp.asarray(cotangent(tuple(y.shape)), dtype=y.dtype))
    return np.asarray(grad, dtype=np.float64)


def _torch(function: Function, x: np.ndarray, cotangent: Callable[..., np.ndarray]) -> np.ndarray:
    import torch

    tensor = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        y = function(tensor)
        if not y.requires_grad:
            return np.zeros(x.shape)
        seed = torch.as_tensor(cotangent(tuple(y.shape)), dtype=y.dtype, device=y.device)
        (grad,) = torch.autograd.grad(y, tensor, seed, allow_unused=True)
    if grad is None:
        return np.zeros(x.shape)
    result: np.ndarray = grad.detach().to("cpu", torch.float64).numpy()
    return result


_ADAPTERS: dict[str, Callable[[Function, np.ndarray, Callable[..., np.ndarray]], np.ndarray]] = {
    "tensorflow": _tensorflow,
    "jax": _jax,
    "torch": _torch,
}
