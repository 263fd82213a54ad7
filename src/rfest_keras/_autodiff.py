"""One vector-Jacobian product, in whichever framework runs Keras.

Keras has no backend-neutral gradient op, so each framework's own is used:
``tf.GradientTape``, ``jax.vjp``, ``torch.autograd.grad``. The framework is imported
inside its adapter only; ``precision`` gives JAX 64-bit types for the duration of a
call (``jax.enable_x64`` is scoped, the global flag is not changed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

__all__ = ["Compiled", "compiled", "precision", "supported", "to_numpy", "vjp"]

Function = Callable[[Any], Any]


def vjp(
    function: Function, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray]
) -> np.ndarray:
    """``cotangent(y.shape)ᵀ · ∂function(x)/∂x`` as a float64 numpy array shaped like ``x``."""
    return _ADAPTERS[keras.backend.backend()](function, x, cotangent)


class Compiled:
    """``maps(x, units)``: ``Σ_c |∂ Σ y[k, unit_k, :] / ∂ x[k, ..., c]|`` per probe unit
    ``k``; ``output_shape(x)``: the shape of ``y``. One compiled program serves both, at
    every input size (see :func:`compiled`)."""

    def __init__(self, program: Any, rank: int, dtype: str) -> None:
        self._program, self._rank, self._dtype = program, rank, dtype

    def maps(self, x: np.ndarray, units: Sequence[tuple[int, ...]]) -> np.ndarray:
        if units and all(len(unit) == 0 for unit in units):  # an output without spatial
            index = np.zeros((len(units), self._rank), np.int32)  # axes: see compiled
        else:
            index = np.array(units, np.int32).reshape(len(units), self._rank)
        maps, _, _ = self._run(x, index)
        return maps

    def output_shape(self, x: np.ndarray) -> tuple[tuple[int, ...], int]:
        """The shape of ``y``, and the elements of every layer output on the way."""
        _, shape, elements = self._run(x, np.zeros((0, self._rank), np.int32))
        return tuple(int(s) for s in shape), int(elements)

    def _run(self, x: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, Any, Any]:
        import tensorflow as tf

        with _no_graph_rewrites():
            maps, shape, elements = self._program(tf.constant(x, self._dtype), tf.constant(index))
        return maps.numpy(), shape.numpy(), elements.numpy()


def compiled(
    function: Callable[[Any], tuple[Any, Any]], rank: int, channels: int, dtype: str
) -> Compiled | None:
    """``function``'s probe maps and output shapes as one compiled program for every input
    size, or None where the framework has none here. ``function(x)`` returns the output
    and the elements its layers produced (:func:`rfest_keras._memory.run_counting`).

    On TensorFlow a ``tf.function`` over inputs of any spatial size: traced once, then each
    probe costs its arithmetic instead of Keras' per-layer Python overhead, which dominates
    eager passes of a one-channel copy (a probe of NASNetMobile: about 2 s eager, 0.2 s
    compiled). Only for functions that take every size without retracing (a copy built
    with free spatial sizes).
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    from rfest_keras._tf_quirks import input_gradients_only

    def program(x: Any, units: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            y, elements = function(x)
        if len(y.shape) == rank + 2:
            ones = tf.ones(tf.shape(units)[:1], y.dtype)
            batch = tf.range(tf.shape(units)[0], dtype=units.dtype)[:, None]
            points = tf.scatter_nd(tf.concat([batch, units], axis=1), ones, tf.shape(y)[:-1])
            seed = tf.broadcast_to(points[..., None], tf.shape(y))  # every channel of the unit
        else:  # no spatial axes (a classifier's scores): each probe's one unit is all of y
            seed = tf.ones_like(y)
        # kernel gradients would be pruned when the program runs, but tracing them costs
        # a shape and a backprop op per convolution (NASNetMobile: 356)
        with input_gradients_only():
            grad = tape.gradient(y, x, output_gradients=seed)
        if grad is None:
            return tf.zeros(tf.shape(x)[:-1], tf.float64), tf.shape(y), elements
        return tf.cast(tf.reduce_sum(tf.abs(grad), axis=-1), tf.float64), tf.shape(y), elements

    signature = [
        tf.TensorSpec([None] * (rank + 1) + [channels], tf.as_dtype(dtype)),
        tf.TensorSpec([None, rank], tf.int32),
    ]
    return Compiled(tf.function(program, input_signature=signature, autograph=False), rank, dtype)


@contextlib.contextmanager
def _no_graph_rewrites() -> Iterator[None]:
    """TensorFlow's graph optimizer (grappler) rewrites a program when it first runs, and
    again at each new input shape: seconds for a thousand-layer model (NASNetMobile:
    7.5 s, 2.2 s without), 0.2 s per new size for ResNet50, for a program whose every op
    is already what it must be. It is switched off while the program runs, and the
    process-wide option put back as it was."""
    import tensorflow as tf

    key = "disable_meta_optimizer"
    before = tf.config.optimizer.get_experimental_options().get(key, False)
    if before:
        yield
        return
    tf.config.optimizer.set_experimental_options({key: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({key: before})


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

    from rfest_keras._tf_quirks import input_gradients_only

    tensor = tf.convert_to_tensor(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(tensor)
        y = function(tensor)
    seed = tf.convert_to_tensor(cotangent(tuple(y.shape)), dtype=y.dtype)
    with input_gradients_only():
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
