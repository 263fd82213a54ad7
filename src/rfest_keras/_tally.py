"""The values of every layer output in a trace, counted with few operations.

The memory budget (:mod:`rfest_keras._memory`) needs the elements of every layer output
of a probe. Inside a ``tf.function`` whose spatial sizes are free, each count is a
``Size`` operation: NASNetMobile's 349 were a fifth of its trace (0.62 s to 0.49 s without
them). Most layers keep their input's spatial size ('same' windows of stride 1, merges,
element-wise layers): their output holds ``size(input) x channels out / channels in``
values, channels known when the trace is made. Only the layers that change a size get a
``Size`` of their own; the total is one weighted sum of those. Outputs without a spatial
extent (a pooled vector, a squeeze-excite gate: a handful of values) are not counted
(MobileNetV3Small: 28 ``Size`` operations to 15, with a gate's product counted as the
map it multiplies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rfest_keras._linearize import IDENTITY_LAYERS

__all__ = ["Tally", "same_spatial_input"]

_WINDOWS = frozenset(
    f"{kind}{d}D"
    for kind in ("Conv", "SeparableConv", "DepthwiseConv", "AveragePooling", "MaxPooling")
    for d in (1, 2, 3)
)
_MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
_ELEMENTWISE = IDENTITY_LAYERS | {"Identity", "Rescaling", "Dense", "Softmax"}


def same_spatial_input(layer: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """An input of a built-in ``layer`` call whose spatial size its output has for
    certain, or None."""
    kind = type(layer).__name__
    if not type(layer).__module__.startswith("keras.src.layers."):
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    inputs = args[0] if args else kwargs.get("inputs")
    if kind in _ELEMENTWISE:
        return inputs if hasattr(inputs, "shape") else None
    if kind in _WINDOWS:
        strides = tuple(getattr(layer, "strides", (1,)) or (1,))
        if layer.padding == "same" and all(int(s) == 1 for s in strides):
            return inputs
        return None
    if (
        kind in _MERGES | {"Concatenate"}
        and isinstance(inputs, (list, tuple))
        and inputs
        and all(hasattr(t, "shape") for t in inputs)
    ):
        ranks = {len(t.shape) for t in inputs}
        if kind == "Concatenate" and int(layer.axis) % ranks.pop() != len(inputs[0].shape) - 1:
            return None
        if kind == "Concatenate":
            return inputs[0]  # equal sizes, or it fails
        # a merge of equal static shapes cannot broadcast except where a free size is 1
        # at run time (a 1 x 1 map: a few values); a gate without extent takes the map's
        maps = [t for t in inputs if not _without_extent(t)]
        shapes = {tuple(t.shape[:-1]) for t in maps}
        return maps[0] if len(shapes) == 1 and len(ranks) == 1 else None
    return None


class Tally:
    """``count(output, like)``: add a layer output's elements, ``like`` an input it has the
    spatial size of (or None); ``total()``: every count so far, as one float64 tensor.

    Sizes are shared only inside a trace, where the graph keeps every tensor alive
    anyway; run eagerly, each output is counted on its own and none is held, so a pass
    frees its activations as it goes."""

    def __init__(self) -> None:
        import tensorflow as tf

        self._tracing = not tf.executing_eagerly()
        self._sizes: list[Any] = []  # one Size per tensor that is a base
        self._weights: list[float] = []
        self._base_of: dict[int, tuple[int, float, Any]] = {}  # id -> (base, factor, tensor)

    def count(self, output: Any, like: Any = None) -> None:
        if _without_extent(output):
            return  # a pooled vector or a gate: a handful of values, not a map
        if not self._tracing:
            import tensorflow as tf

            self._sizes.append(tf.size(output, out_type=tf.int64))
            self._weights.append(1.0)
            return
        if (
            like is not None
            and _channels(output)
            and _channels(like)
            and len(output.shape) == len(like.shape)
        ):
            base, factor = self._base(like)
            factor *= _channels(output) / _channels(like)
            self._base_of[id(output)] = (base, factor, output)
            self._weights[base] += factor
            return
        base, factor = self._base(output)
        self._weights[base] += factor

    def total(self) -> Any:
        import tensorflow as tf

        if not self._sizes:
            return tf.zeros((), tf.float64)
        sizes = tf.cast(tf.stack(self._sizes), tf.float64)
        return tf.tensordot(sizes, tf.constant(self._weights, tf.float64), 1)

    def _base(self, tensor: Any) -> tuple[int, float]:
        import tensorflow as tf

        known = self._base_of.get(id(tensor))
        if known is not None and known[2] is tensor:
            return known[0], known[1]
        self._sizes.append(tf.size(tensor, out_type=tf.int64))
        self._weights.append(0.0)
        base = len(self._sizes) - 1
        self._base_of[id(tensor)] = (base, 1.0, tensor)
        return base, 1.0


def _without_extent(tensor: Any) -> bool:
    """Whether ``tensor`` has no spatial axes, or only axes of static size 1."""
    shape = getattr(tensor, "shape", None)
    return shape is not None and all(d == 1 for d in tuple(shape)[1:-1])


def _channels(tensor: Any) -> int:
    """The static size of the last axis, 0 where it is not known."""
    shape = getattr(tensor, "shape", None)
    if shape is None or len(shape) < 2 or shape[-1] is None:
        return 0
    return int(shape[-1])
