"""Stride-1 windows and the merges between them, kept as one support until read.

The narrowed walk (:mod:`rfest_keras._narrow`) makes each convolution and pooling window
a window of equal taps on one channel. Where only supports matter, many of them are one:

- two stride-1 'same' windows of odd sizes ``k1`` and ``k2`` along each axis, undilated,
  in a row, have the support of one window of ``k1 + k2 - 1``: unit ``i`` reads
  ``i - a .. i + b`` of the map between them clipped to its extent, and each of those
  ``j - c .. j + d`` clipped again, which is ``i - a - c .. i + b + d`` clipped once;
- a sum (a merge, a concatenation along the channels) of such windows of one tensor has
  the support of the largest where that one covers every other along every axis (a
  ``1 x 7`` and a ``7 x 1`` window stay two: their union is a cross, not a window);
- a window of a sum is the sum of the window of each term.

So a value of the walk is kept as :class:`Windows`, terms ``(tensor, kernel)`` whose sum
has its support, and computed (:meth:`Unions.tensor`) only where another layer reads it.
An Inception block's branches over one input are one window; a NASNet cell's, one per
input of the cell; a DenseNet block's, one. Each convolution fewer is a forward and a
backward operation fewer to trace and to run (NASNetMobile: 149 convolutions to 64, its
trace 0.61 s to 0.26 s; DenseNet121: 9 convolutions, InceptionV3: 20).

A window of many taps along several axes runs as one window per axis (a box is the
composition of its sides): a 9 x 9 costs 18 taps a pixel, not 81, for one convolution
more to trace; from 7 x 7 on, where that pays (splitting 5 x 5 windows too cost
MobileNetV3Small six more convolutions, 352 to 367 traced operations, for nothing).

Supports only: the values differ (the walk sums where the model would weigh), and every
weight is positive, so no sum cancels. A value read by more than one layer is computed
once where it has more than one term (else each reader would compute every term), and
each ``(tensor, kernel)`` window once per walk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rfest_keras._graph import graph_of
from rfest_keras._linearize import IDENTITY_LAYERS, MERGES
from rfest_keras._tally import Tally
from rfest_keras._windows import per_axis, uniform_window

__all__ = [
    "Unions",
    "Windows",
    "composed",
    "covers",
    "passes_one_channel",
    "stride_1_window",
    "summing",
]

Call = Callable[..., Any]

_CONVOLUTIONS = frozenset(
    f"{kind}{d}D" for kind in ("Conv", "SeparableConv", "DepthwiseConv") for d in (1, 2, 3)
)
_POOLS = frozenset(f"{kind}Pooling{d}D" for kind in ("Average", "Max") for d in (1, 2, 3))
_LAYERS = "keras.src.layers."
_SUMS = frozenset({"Add", "Average", *MERGES})  # linearized: a sum or mean of the inputs


@dataclass(frozen=True, eq=False)
class Windows:
    """A value of the narrowed walk as ``Σ window_kernel(tensor)`` over ``terms``: the
    windows stride 1, 'same', of equal taps, summing their tensor's channels into one."""

    terms: tuple[tuple[Any, tuple[int, ...]], ...]

    @staticmethod
    def of(value: Any) -> Windows:
        if isinstance(value, Windows):
            return value
        rank = len(value.shape) - 2
        return Windows(((value, (1,) * rank),))

    def then(self, kernel: tuple[int, ...]) -> Windows:
        """This value read through a window of ``kernel``."""
        return Windows(tuple((tensor, composed(inner, kernel)) for tensor, inner in self.terms))

    @staticmethod
    def union(values: list[Windows]) -> Windows:
        """The sum of ``values``: a window of a tensor covered by another of the same
        tensor along every axis is left out."""
        terms: list[tuple[Any, tuple[int, ...]]] = []
        for tensor, kernel in (term for value in values for term in value.terms):
            if any(t is tensor and covers(k, kernel) for t, k in terms):
                continue
            terms = [(t, k) for t, k in terms if not (t is tensor and covers(kernel, k))]
            terms.append((tensor, kernel))
        return Windows(tuple(terms))

    def spatial_shape(self) -> tuple[Any, ...]:
        """The static shape of the sum but its channels (every term's is the same)."""
        return tuple(self.terms[0][0].shape[:-1])


def composed(first: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...]:
    """The kernel of two stride-1 'same' odd windows in a row."""
    return tuple(a + b - 1 for a, b in zip(first, then, strict=True))


def covers(outer: tuple[int, ...], inner: tuple[int, ...]) -> bool:
    """Whether a centred window of ``outer`` holds one of ``inner`` along every axis."""
    return all(a >= b for a, b in zip(outer, inner, strict=True))


def stride_1_window(operation: Any) -> tuple[int, ...] | None:
    """The kernel of a built-in convolution or pooling window that is stride 1, 'same',
    undilated, odd and more than one tap along some axis, channels last, one output per
    input channel where it is depthwise; else None."""
    if not type(operation).__module__.startswith(_LAYERS):
        return None
    geometry = _geometry(operation)
    if geometry is None:
        return None
    kernel, strides, dilation = geometry
    if (
        operation.padding != "same"
        or any(s != 1 for s in strides)
        or any(d != 1 for d in dilation)
        or any(k % 2 == 0 for k in kernel)
        or all(k == 1 for k in kernel)
    ):
        return None
    return kernel


def passes_one_channel(operation: Any) -> bool:
    """A layer that, narrowed, gives back a one-channel input as it is, up to a positive
    scale: a linearized activation or normalization, a 1x1 stride-1 convolution."""
    if not type(operation).__module__.startswith(_LAYERS):
        return False
    if type(operation).__name__ in IDENTITY_LAYERS:
        return True
    if type(operation).__name__ not in _CONVOLUTIONS:
        return False
    geometry = _geometry(operation)
    return geometry is not None and all(
        k == 1 and s == 1 for k, s in zip(geometry[0], geometry[1], strict=True)
    )


def _geometry(
    operation: Any,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """``(kernel, strides, dilation)`` of a channels-last convolution (a depthwise one
    with multiplier 1) or pooling window; else None."""
    kind = type(operation).__name__
    if getattr(operation, "data_format", "channels_last") != "channels_last":
        return None
    if kind in _CONVOLUTIONS:
        if int(getattr(operation, "depth_multiplier", 1)) != 1:
            return None
        kernel = tuple(int(k) for k in operation.kernel_size)
        dilation = per_axis(operation.dilation_rate, len(kernel))
    elif kind in _POOLS:
        kernel = tuple(int(k) for k in operation.pool_size)
        dilation = (1,) * len(kernel)
    else:
        return None
    return kernel, per_axis(operation.strides, len(kernel)), dilation


def summing(operation: Any) -> bool:
    """A merge whose linearized value has the support of the union of its inputs."""
    kind, module = type(operation).__name__, type(operation).__module__
    if module.startswith("keras.src.ops.numpy"):
        return kind == "Add"
    if not module.startswith(_LAYERS):
        return False
    if kind == "Concatenate":
        return True  # along the channels only: checked on the values
    return kind in _SUMS


class Unions:
    """The calls of one narrowed walk that keep :class:`Windows` (:meth:`wrap`), and
    :meth:`tensor`, which computes one, counting what it adds in ``tally``.

    ``keep``, the operation being measured, always gives tensors."""

    def __init__(self, model: Any, tally: Tally, keep: Any = None) -> None:
        self._tally, self._keep = tally, keep
        self._readers = _readers(graph_of(model), graph_of(keep) if keep is not None else None)
        self._windows: dict[tuple[int, tuple[int, ...]], tuple[Any, Any]] = {}
        self._sums: dict[int, tuple[Windows, Any]] = {}

    def wrap(self, operation: Any, call: Call) -> Call:
        """``call`` for ``operation``, taking and giving :class:`Windows` where it can."""
        if operation is self._keep:
            return lambda *args, **kwargs: self.computed(call(*self.computed(args), **kwargs))
        kernel = stride_1_window(operation)
        readers = self._readers.get(id(operation), 2)

        def settled(value: Windows) -> Any:
            if readers == 0:  # an output
                return self.tensor(value)
            # read by more than one layer: computed once, not once per reader
            return self.tensor(value) if readers != 1 and len(value.terms) > 1 else value

        if kernel is not None:
            return lambda inputs, *args, **kwargs: settled(Windows.of(inputs).then(kernel))
        if passes_one_channel(operation):

            def passed(inputs: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(inputs, Windows) or type(operation).__name__ not in IDENTITY_LAYERS:
                    return settled(Windows.of(inputs))
                return call(inputs, *args, **kwargs)

            return passed
        if summing(operation):

            def summed(*args: Any, **kwargs: Any) -> Any:
                values = list(args[0]) if len(args) == 1 else list(args)
                if not kwargs and self._unites(operation, values):
                    return settled(Windows.union([Windows.of(v) for v in values]))
                return call(*self.computed(args), **self.computed(kwargs))

            return summed
        return lambda *args, **kwargs: call(*self.computed(args), **self.computed(kwargs))

    def tensor(self, value: Windows) -> Any:
        """The sum of ``value``'s windows, each computed once per walk."""
        known = self._sums.get(id(value))
        if known is not None:
            return known[1]
        import tensorflow as tf

        parts = [self._window(tensor, kernel) for tensor, kernel in value.terms]
        total = parts[0] if len(parts) == 1 else tf.add_n(parts)
        if len(parts) > 1:
            self._tally.count(total, parts[0])
        self._sums[id(value)] = (value, total)
        return total

    def _window(self, tensor: Any, kernel: tuple[int, ...]) -> Any:
        key = (id(tensor), kernel)
        known = self._windows.get(key)
        if known is not None:
            return known[1]
        ones = (1,) * len(kernel)
        windows = [kernel]
        if math.prod(kernel) > 3 * sum(kernel):  # one per axis
            windows = [
                tuple(size if a == axis else 1 for a in range(len(kernel)))
                for axis, size in enumerate(kernel)
                if size > 1
            ]
        result = tensor
        for window in windows:
            weight = 1 / math.prod(window)
            result = uniform_window(result, window, ones, ones, "same", "channels_last", weight)
            if result is not tensor:
                self._tally.count(result, tensor)
        self._windows[key] = (tensor, result)
        return result

    def _unites(self, operation: Any, values: list[Any]) -> bool:
        """Whether the merge sums ``values`` of one spatial shape, as one channel."""
        if len(values) < 2 or not any(isinstance(v, Windows) for v in values):
            return False
        if not all(isinstance(v, Windows) or _is_tensor(v) for v in values):
            return False
        shapes = {
            v.spatial_shape() if isinstance(v, Windows) else tuple(v.shape[:-1]) for v in values
        }
        if len(shapes) != 1:
            return False
        (shape,) = shapes
        if type(operation).__name__ == "Concatenate":
            return int(operation.axis) % (len(shape) + 1) == len(shape)
        return True

    def computed(self, value: Any) -> Any:
        """``value`` with every :class:`Windows` in it computed."""
        if isinstance(value, Windows):
            return self.tensor(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.computed(v) for v in value)
        if isinstance(value, dict):
            return {k: self.computed(v) for k, v in value.items()}
        return value


def _is_tensor(value: Any) -> bool:
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) >= 3


def _readers(model: Any, keep: Any) -> dict[int, int]:
    """Operation id -> the layers reading its output, for operations called once; 0 for
    one giving an output of ``model`` or of ``keep`` (a nested model being measured),
    which must be a tensor; an output of another nested graph counts as two readers (they
    are not known here)."""
    readers: dict[int, int] = {}
    for graph in _graphs(model):
        by_tensor: dict[int, int] = {}
        for nodes in graph._nodes_by_depth.values():
            for node in nodes:
                if not node.is_input:
                    for tensor in node.input_tensors:
                        by_tensor[id(tensor)] = by_tensor.get(id(tensor), 0) + 1
        given = {id(t) for t in graph.outputs} if graph is model or graph is keep else set()
        for tensor in graph.outputs:
            by_tensor[id(tensor)] = by_tensor.get(id(tensor), 0) + 2
        for nodes in graph._nodes_by_depth.values():
            for node in nodes:
                operation = node.operation
                if node.is_input:
                    continue
                if any(id(t) in given for t in node.outputs):
                    readers[id(operation)] = 0
                elif len(getattr(operation, "_inbound_nodes", ())) == 1:
                    readers[id(operation)] = sum(by_tensor.get(id(t), 0) for t in node.outputs)
    return readers


def _graphs(model: Any) -> Iterator[Any]:
    graph = graph_of(model)
    if graph is None:
        return
    yield graph
    for operation in graph.operations:
        if graph_of(operation) is not None:
            yield from _graphs(operation)
