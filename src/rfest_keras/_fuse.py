"""Runs of stride-1 windows in the narrowed walk, computed as one window.

The narrowed walk (:mod:`rfest_keras._narrow`) makes each convolution a window of equal
taps on one channel. Two such windows in a row, 'same' padding, stride 1, no dilation and
odd sizes ``k1`` and ``k2`` along each axis, with nothing between them but layers that
pass one channel through (linearized activations and normalizations, 1x1 convolutions)
have the support of one window of ``k1 + k2 - 1``: unit ``i`` reads ``i - a .. i + b``
of the intermediate map clipped to the input, and each of those ``j - c .. j + d``
clipped again, which is ``i - a - c .. i + b + d`` clipped once, the fused window's
'same' reach. NASNetMobile's cells are such runs (a separable convolution, batch
normalization, ReLU, a separable convolution): 64 of its 213 windows need no
convolution of their own, in the trace or in a probe.

Only windows whose output, through the pass-through layers, goes nowhere else (one
consumer, not a model output, not the layer being measured) are absorbed: the absorbed
window then only sums its input's channels, and the next one runs the fused window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rfest_keras._graph import graph_of
from rfest_keras._linearize import IDENTITY_LAYERS
from rfest_keras._windows import per_axis

__all__ = ["Fusions", "fusions"]

_WINDOW_KINDS = frozenset(
    f"{kind}{d}D" for kind in ("Conv", "SeparableConv", "DepthwiseConv") for d in (1, 2, 3)
)


@dataclass
class Fusions:
    """``absorbed``: ids of windows that only sum their input's channels; ``kernels``:
    id of a window -> the kernel of the run it ends."""

    absorbed: set[int] = field(default_factory=set)
    kernels: dict[int, tuple[int, ...]] = field(default_factory=dict)


def fusions(model: Any, keep: Any = None) -> Fusions:
    """The runs of :func:`fusable` windows in ``model``'s graph and its nested graphs
    (each within its own graph); ``keep``, the layer being measured, is never absorbed."""
    found = Fusions()
    for graph in _graphs(model):
        _fuse_in(graph, keep, found)
    return found


def _graphs(model: Any) -> Iterator[Any]:
    graph = graph_of(model)
    if graph is None:
        return
    yield graph
    for operation in graph.operations:
        if graph_of(operation) is not None:
            yield from _graphs(operation)


def _fuse_in(graph: Any, keep: Any, found: Fusions) -> None:
    consumers: dict[int, int] = {}
    producer: dict[int, Any] = {}
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            if node.is_input:
                continue
            for tensor in node.input_tensors:
                consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
            for tensor in node.outputs:
                producer[id(tensor)] = node
    for tensor in graph.outputs:
        consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # inputs first
        for node in graph._nodes_by_depth[depth]:
            kernel = None if node.is_input else fusable(node.operation)
            if kernel is None:
                continue
            before = _window_before(node, consumers, producer, keep)
            if before is not None:
                inner = found.kernels.get(id(before), fusable(before))
                assert inner is not None
                found.absorbed.add(id(before))
                kernel = tuple(a + b - 1 for a, b in zip(inner, kernel, strict=True))
                found.kernels[id(node.operation)] = kernel


def _window_before(
    node: Any, consumers: dict[int, int], producer: dict[int, Any], keep: Any
) -> Any:
    """The fusable window whose output reaches ``node`` only, through pass-through
    layers only, or None."""
    if len(node.input_tensors) != 1:
        return None
    (tensor,) = node.input_tensors
    while consumers.get(id(tensor)) == 1:
        source = producer.get(id(tensor))
        if source is None:
            return None
        operation = source.operation
        if operation is keep or len(getattr(operation, "_inbound_nodes", ())) != 1:
            return None
        if fusable(operation) is not None:
            return operation
        if not _passes_one_channel(operation) or len(source.input_tensors) != 1:
            return None
        (tensor,) = source.input_tensors
    return None


def fusable(operation: Any) -> tuple[int, ...] | None:
    """The kernel of a built-in convolution that the narrowed walk runs as a window of
    equal taps, 'same', stride 1, no dilation, odd along every axis, channels last;
    else None."""
    geometry = _stride_1_window(operation, "keras.src.")
    if geometry is None:
        return None
    kernel, dilation = geometry
    if (
        operation.padding != "same"
        or any(d != 1 for d in dilation)
        or any(k % 2 == 0 for k in kernel)
        or all(k == 1 for k in kernel)
    ):
        return None
    return kernel


def _passes_one_channel(operation: Any) -> bool:
    """A layer that, narrowed, returns a one-channel input as it is: a linearized
    activation or normalization, a 1x1 stride-1 convolution (one tap of weight 1)."""
    if type(operation).__name__ in IDENTITY_LAYERS:
        return type(operation).__module__.startswith("keras.src.layers.")
    geometry = _stride_1_window(operation, "keras.src.layers.")
    return geometry is not None and all(k == 1 for k in geometry[0])


def _stride_1_window(operation: Any, module: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(kernel, dilation)`` of a convolution from ``module``, channels last, stride 1
    (a depthwise one with multiplier 1); else None."""
    if type(operation).__name__ not in _WINDOW_KINDS or not type(operation).__module__.startswith(
        module
    ):
        return None
    kernel = tuple(int(k) for k in operation.kernel_size)
    if (
        getattr(operation, "data_format", "channels_last") != "channels_last"
        or any(s != 1 for s in per_axis(operation.strides, len(kernel)))
        or int(getattr(operation, "depth_multiplier", 1)) != 1
    ):
        return None
    return kernel, per_axis(operation.dilation_rate, len(kernel))
