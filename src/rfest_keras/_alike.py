"""Whether a narrowed model treats its spatial axes alike.

Linearized (constant positive weights, see :mod:`rfest_keras._linearize`), a model whose
every layer has the same kernel, stride, dilation, padding, cropping and resampling along
every spatial axis commutes with any permutation of those axes: the gradient maps of a
probe with two axes swapped are those of the swapped probe. The estimator then measures
one of two axes of equal size and gives the other its answer
(:meth:`rfest_keras.KerasGradientProvider.axes_alike`).

The check is a whitelist over the layers :func:`rfest_keras._narrow.narrowable` accepts:
a layer kind not named here, a per-axis parameter that differs between axes, a
concatenation or flattening that mixes spatial axes, or an element-wise operation with a
constant that is not a scalar (``x * mask``) makes the answer False.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from rfest_keras._graph import graph_of
from rfest_keras._linearize import APPLICATION_LAYERS, ELEMENTWISE_OPERATIONS, adds_unit_axes
from rfest_keras._union import composed, covers, passes_one_channel, stride_1_window, summing

__all__ = ["axes_alike"]


def axes_alike(model: Any) -> bool:
    """Every operation of ``model``'s graph, at any depth, is the same along every spatial
    axis, or a stride-1 window whose sums of windows (:mod:`rfest_keras._union`) are, where
    another layer reads them (a model that is not a Keras graph: False).

    A 1x7 window then a 7x1 one (Inception's factorized convolutions) is not the same
    along both axes, but their support is one 7x7 window's; a 1x3 and a 3x1 window of one
    tensor, concatenated, make a cross that is the same along both. Only supports matter
    to the estimator, so such models count as alike: InceptionV3 and InceptionResNetV2
    then cost one axis' probes, not two."""
    graph = graph_of(model)
    if graph is None:
        return False
    windows: dict[int, Terms] = {}  # tensor -> the windows of alike tensors it sums
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # inputs first
        for node in graph._nodes_by_depth[depth]:
            if node.is_input:
                continue
            terms = _as_windows(node, windows)
            if terms is not None:
                windows[id(node.outputs[0])] = terms
                continue
            if not all(_symmetric(windows.get(id(t))) for t in node.input_tensors):
                return False
            operation = node.operation
            inner = graph_of(operation)
            if inner is not None:
                if not axes_alike(inner):
                    return False
            elif not _operation_alike(operation, node):
                return False
    return all(_symmetric(windows.get(id(t))) for t in graph.outputs)


Terms = frozenset[tuple[int, tuple[int, ...]]]


def _as_windows(node: Any, windows: dict[int, Terms]) -> Terms | None:
    """The sum of windows ``node``'s output is, as ``(tensor id, kernel)`` terms, where
    the node is a stride-1 window, a pass-through or a merge of one spatial shape;
    else None."""
    operation, inputs = node.operation, node.input_tensors
    if len(node.outputs) != 1 or not inputs:
        return None

    def of(tensor: Any) -> Terms:
        rank = len(tensor.shape) - 2
        return windows.get(id(tensor), frozenset({(id(tensor), (1,) * rank)}))

    kernel = stride_1_window(operation)
    if kernel is not None and len(inputs) == 1:
        return frozenset((base, composed(inner, kernel)) for base, inner in of(inputs[0]))
    if passes_one_channel(operation) and len(inputs) == 1:
        return of(inputs[0])
    if summing(operation) and len({tuple(t.shape[:-1]) for t in inputs}) == 1:
        rank = len(inputs[0].shape)
        if type(operation).__name__ == "Concatenate" and int(operation.axis) % rank != rank - 1:
            return None
        return frozenset().union(*(of(t) for t in inputs))
    return None


def _symmetric(terms: Terms | None) -> bool:
    """A sum of windows (None: a plain tensor, alike) the same along every axis: each
    window's axes permuted is covered by a window of the same tensor."""
    if terms is None:
        return True
    for base, kernel in terms:
        for permuted in itertools.permutations(kernel):
            if not any(b == base and covers(other, permuted) for b, other in terms):
                return False
    return True


def _operation_alike(operation: Any, node: Any) -> bool:
    kind, module = type(operation).__name__, type(operation).__module__
    if module.startswith("keras.src.ops."):
        constants = [
            a
            for a in keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
            if not isinstance(a, keras.KerasTensor)
        ]
        return kind in ELEMENTWISE_OPERATIONS and all(_scalar(c) for c in constants)
    if module.startswith("keras.src.applications."):
        return kind in APPLICATION_LAYERS
    if not module.startswith("keras.src.layers."):
        return False
    if kind in _ALIKE:
        return True
    rule = _RULES.get(re.sub("[123]D", "", kind, count=1))  # Conv2DTranspose: ConvTranspose
    return rule is not None and rule(operation, node)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or np.size(value) == 1


def _same(*values: Any) -> bool:
    """Every per-axis entry of each value is the same (a scalar is the same everywhere)."""
    for value in values:
        if value is None or isinstance(value, (int, float, str)):
            continue
        entries = [tuple(v) if isinstance(v, (list, tuple)) else v for v in value]
        if len(set(entries)) > 1:
            return False
    return True


def _per_axis_pairs(value: Any) -> tuple[Any, ...]:
    """``(before, after)`` per axis; a 1-D layer's ``(before, after)`` is one axis' pair."""
    return tuple(value) if isinstance(value[0], (list, tuple)) else (tuple(value),)


def _window(layer: Any, node: Any) -> bool:
    sizes = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    return _same(
        sizes,
        getattr(layer, "strides", None),
        getattr(layer, "dilation_rate", None),
        getattr(layer, "output_padding", None),
    )


def _softmax(layer: Any, node: Any) -> bool:
    """Over the channels, or along every spatial axis (global along each): not along some."""
    rank = len(node.input_tensors[0].shape)
    wanted = layer.axis if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
    spatial = {int(a) % rank for a in wanted} & set(range(1, rank - 1))
    return not spatial or spatial == set(range(1, rank - 1))


def _channel_concatenation(layer: Any, node: Any) -> bool:
    rank = len(node.input_tensors[0].shape)
    return all(len(t.shape) == rank for t in node.input_tensors) and int(layer.axis) % rank == (
        rank - 1
    )


def _square(layer: Any, node: Any) -> bool:
    return int(layer.height) == int(layer.width)


def _per_channel_rescaling(layer: Any, node: Any) -> bool:
    return all(np.ndim(v) <= 1 for v in (layer.scale, layer.offset))


_ALIKE = frozenset(
    {
        "InputLayer",
        "Identity",
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Dense",  # on the channel axis: channels-first models are refused before this
        *("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU"),
        *("BatchNormalization", "LayerNormalization", "GroupNormalization"),
        *("UnitNormalization", "RMSNormalization", "Normalization"),
        *("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout"),
        "ActivityRegularization",
        *(f"SpatialDropout{d}D" for d in (1, 2, 3)),
        *("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"),
        *("RandomContrast", "RandomBrightness"),
        *(f"Global{kind}Pooling{d}D" for kind in ("Average", "Max") for d in (1, 2, 3)),
    }
)
"""Layers without per-axis parameters (element-wise, per channel, identity at inference
or global)."""

_RULES: dict[str, Callable[[Any, Any], bool]] = {
    **dict.fromkeys(
        ("Conv", "ConvTranspose", "SeparableConv", "DepthwiseConv", "MaxPooling", "AveragePooling"),
        _window,
    ),
    "ZeroPadding": lambda layer, node: _same(_per_axis_pairs(layer.padding)),
    "Cropping": lambda layer, node: _same(_per_axis_pairs(layer.cropping)),
    "UpSampling": lambda layer, node: _same(layer.size),
    "Resizing": _square,
    "CenterCrop": _square,
    "RandomCrop": _square,
    "Rescaling": _per_channel_rescaling,
    "Reshape": lambda layer, node: adds_unit_axes(layer.target_shape),
    "Concatenate": _channel_concatenation,
    "Softmax": _softmax,
}
"""Layers with per-axis parameters, by kind without its ``1D``/``2D``/``3D``."""
