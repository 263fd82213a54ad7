"""One channel per layer on the user's own model: the one-channel copy, without the copy.

With constant positive weights every output channel of a convolution or dense layer is
the same function of its input, so one channel has the support of all of them
(:mod:`rfest_keras._linearize`). The one-channel copy gets there by rebuilding the model
from its config with one filter per layer; building it costs a Keras layer, a symbolic
pass and fresh variables per layer (DenseNet121: 0.4-1 s, about two of its own forward and
backward passes). Here the user's graph is walked instead (:func:`rfest_keras._graph.run_graph`)
and each built-in layer runs :func:`narrowed_call`: a function of the layer's geometry
(kernel size, strides, padding, dilation, data format) that makes the copy's one-filter
kernel ``1 / fan_in`` for the channels its input has, as a window of equal taps
(:mod:`rfest_keras._windows`); a concatenation along the channels sums them. It reads no
variable of the model, and the layers that run their own ``call`` (padding, cropping...)
hold no float weights. A model with any layer the table does not know is refused
(:func:`narrowable`) and measured through the copy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from rfest_keras._graph import graph_of, run_graph, summed
from rfest_keras._linearize import (
    APPLICATION_LAYERS,
    CHANNEL_BLIND,
    ELEMENTWISE_OPERATIONS,
    MERGES,
    adds_unit_axes,
    average_pool,
    linear_call,
    linear_operation,
    mean_of,
    sum_of,
)
from rfest_keras._tally import Tally
from rfest_keras._union import Unions
from rfest_keras._windows import per_axis, uniform_window

__all__ = ["narrowable", "narrowed_call", "run_narrowed"]

Call = Callable[..., Any]

_CONVOLUTIONS = frozenset(f"Conv{d}D" for d in (1, 2, 3))
_TRANSPOSED = frozenset(f"Conv{d}DTranspose" for d in (1, 2, 3))
_SEPARABLE = frozenset(f"SeparableConv{d}D" for d in (1, 2))
_DEPTHWISE = frozenset(f"DepthwiseConv{d}D" for d in (1, 2))
_WINDOWS = frozenset(f"{kind}Pooling{d}D" for kind in ("Average", "Max") for d in (1, 2, 3))
_SCALINGS = frozenset({"Add", "Subtract", "Multiply", "TrueDivide", "Divide"})


def narrowable(model: Any) -> bool:
    """Every operation of ``model``'s graph, at any depth, has a :func:`narrowed_call`."""
    graph = graph_of(model)
    if graph is None:
        return False
    for operation in graph.operations:
        inner = graph_of(operation)
        if inner is not None:
            if not narrowable(inner):
                return False
        elif type(operation).__name__ != "InputLayer" and narrowed_call(operation) is None:
            return False
    return True


def narrowed_call(operation: Any) -> Call | None:
    """What ``operation`` computes in the one-channel linearized copy, at whatever number of
    channels its input has; None for an operation the table does not know."""
    kind, module = type(operation).__name__, type(operation).__module__
    if module.startswith("keras.src.ops."):
        if kind not in ELEMENTWISE_OPERATIONS:
            return None
        call: Call = summed(operation) or linear_operation(operation) or operation.call
        return _without_constants(kind, call) if kind in _SCALINGS else call
    if module.startswith("keras.src.applications."):
        if kind not in APPLICATION_LAYERS:
            return None
        return _identity if kind == "LayerScale" else _own(operation)
    if not module.startswith("keras.src.layers.") or not _plain(operation):
        return None
    if kind in _WINDOWS:
        return _window_mean(operation, kind)
    swapped: Call | None = linear_call(operation)  # identities, global max pooling
    if swapped is not None:
        return swapped
    if kind in MERGES or kind in ("Add", "Average"):
        if kind == "Add":
            return summed(operation)
        return _merged(sum_of if MERGES.get(kind) == "Add" else mean_of)
    if kind in _CONVOLUTIONS | _TRANSPOSED | _SEPARABLE | _DEPTHWISE or kind == "Dense":
        return _one_filter(operation, kind)
    if kind == "Reshape" and adds_unit_axes(operation.target_shape):
        return _unit_axes(tuple(operation.target_shape))
    if kind == "Concatenate":
        return _joined(operation)
    if kind in CHANNEL_BLIND:
        return _own(operation)
    return None


def run_narrowed(
    model: keras.Model, inputs: Any, dtype: str, record: tuple[Any, list[Any]] | None = None
) -> tuple[Any, Any]:
    """:func:`rfest_keras._graph.run_graph` of a :func:`narrowable` model, every operation
    replaced by its :func:`narrowed_call`, in ``dtype``; ``record`` ``(layer, outputs)``
    collects the output of each call of that layer (or nested model)."""

    tally = Tally()
    unions = Unions(model, tally, keep=record[0] if record is not None else None)

    def calls(operation: Any) -> Call:
        call = narrowed_call(operation)
        if call is None:
            raise TypeError(f"{type(operation).__name__} has no one-channel counterpart")
        return unions.wrap(operation, call)

    with _computing_in(model, dtype):
        return run_graph(model, inputs, calls=calls, record=record, tally=tally)


@contextlib.contextmanager
def _computing_in(model: keras.Model, dtype: str) -> Iterator[None]:
    """Every layer of ``model`` computes in ``dtype`` for a while (the layers that run their
    own ``call`` cast to their compute dtype: a float32 round trip would round the
    gradient on its way back); their policies are put back after."""
    from rfest_keras._live import Patches, all_layers

    patches = Patches()
    policy = keras.DTypePolicy(dtype)
    try:
        for layer in all_layers(model):
            if not isinstance(layer._dtype_policy, keras.dtype_policies.DTypePolicyMap):
                patches.set(layer, "_dtype_policy", policy)
        yield
    finally:
        patches.restore()


def _plain(layer: Any) -> bool:
    """A built layer that is not a wrapper (wrappers call their sublayers' ``__call__``)."""
    return (
        isinstance(layer, keras.layers.Layer)
        and layer.built
        and not list(layer._flatten_layers(include_self=False, recursive=False))
    )


def _own(layer: Any) -> Call | None:
    """The layer's own ``call``, for a layer without float weights (nothing to replace)."""
    for variable in layer.weights:
        if keras.backend.standardize_dtype(variable.dtype).startswith(("float", "bfloat")):
            return None
    call: Call = layer.call
    return call


def _identity(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    return inputs


def _without_constants(kind: str, call: Call) -> Call:
    """``x + c``, ``c - x``, ``x * c``, ``x / c`` with ``c`` a number (positive where it
    scales) as ``x``. Linearized, the walk's gradient does not depend on values: a shift
    changes no gradient, a positive scale no gradient's support. Each one traced costs
    forward and backward operations (a sum's gradient: seven, to broadcast), and
    MobileNetV3's hard sigmoids are ``(x + 3) * (1 / 6)``."""
    shift = kind in ("Add", "Subtract")

    def call_or_pass(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 2 and not kwargs:
            numbers = [_number(a, shift) for a in args]
            if numbers == [False, True]:
                return args[0]
            if numbers == [True, False] and kind in ("Add", "Subtract", "Multiply"):
                return args[1]
        return call(*args, **kwargs)

    return call_or_pass


def _number(value: Any, shift: bool) -> bool:
    """A Python number that, as a shift (any) or a scale (positive), keeps the support."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return shift or value > 0


def _constant(shape: tuple[int, ...], value: float, dtype: Any) -> Any:
    return keras.ops.convert_to_tensor(np.full(shape, value), dtype=dtype)


def _one_filter(layer: Any, kind: str) -> Call:
    """The layer with one output filter (a depthwise layer: its multiplier per channel),
    its weights ``1 / fan_in`` as :func:`rfest_keras._linearize.constant_value` sets them,
    and no bias or activation."""
    data_format = getattr(layer, "data_format", "channels_last")
    kernel = tuple(getattr(layer, "kernel_size", ()))
    taps = math.prod(kernel)
    geometry = {
        "strides": tuple(getattr(layer, "strides", ())),
        "padding": getattr(layer, "padding", "valid"),
        "dilation_rate": getattr(layer, "dilation_rate", 1),
        "data_format": data_format,
    }
    strides = per_axis(geometry["strides"], len(kernel))
    dilation = per_axis(geometry["dilation_rate"], len(kernel))
    padding = str(geometry["padding"])

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = inputs.dtype
        if kind == "Dense":
            channels = int(inputs.shape[-1])
            return keras.ops.matmul(inputs, _constant((channels, 1), 1 / channels, dtype))
        channels = int(inputs.shape[-1 if data_format == "channels_last" else 1])
        if kind in _DEPTHWISE and channels == int(layer.depth_multiplier) == 1:
            return uniform_window(inputs, kernel, strides, dilation, padding, data_format, 1 / taps)
        if kind in _DEPTHWISE:
            depthwise = _constant((*kernel, channels, int(layer.depth_multiplier)), 1 / taps, dtype)
            return keras.ops.depthwise_conv(inputs, depthwise, **geometry)
        # A separable layer's depthwise taps 1 / taps, then the mean of its channels: the
        # one convolution below, one operation instead of two (NASNet: a third of a trace).
        weight = 1 / (taps * channels)
        if kind in _TRANSPOSED:
            one_filter = _constant((*kernel, 1, channels), weight, dtype)
            return keras.ops.conv_transpose(
                inputs, one_filter, output_padding=layer.output_padding, **geometry
            )
        if padding == "causal":
            left = dilation[0] * (kernel[0] - 1)  # Conv1D: pad the past only
            pads = (
                [[0, 0], [left, 0], [0, 0]]
                if data_format == "channels_last"
                else [[0, 0], [0, 0], [left, 0]]
            )
            inputs = keras.ops.pad(inputs, pads)
        window_padding = "valid" if padding == "causal" else padding
        return uniform_window(
            inputs, kernel, strides, dilation, window_padding, data_format, weight
        )

    return call


def _window_mean(layer: Any, kind: str) -> Call:
    """A pooling window's mean (a maximum's linearization); on one channel, a window of
    equal taps (:func:`rfest_keras._windows.uniform_window`): TensorFlow's float64 pooling
    costs twice its convolution. Other channel counts pool (3-D in float32 there)."""
    pooled: Call = average_pool(layer, kind.replace("Max", "Average"))
    pool_size = tuple(int(k) for k in layer.pool_size)
    strides = tuple(int(s) for s in layer.strides)
    data_format = getattr(layer, "data_format", "channels_last")

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        channels = int(inputs.shape[-1 if data_format == "channels_last" else 1])
        if channels != 1 or len(pool_size) > 2:
            return pooled(inputs)
        return uniform_window(
            inputs,
            pool_size,
            strides,
            (1,) * len(pool_size),
            layer.padding,
            data_format,
            1 / math.prod(pool_size),
        )

    return call


def _joined(layer: Any) -> Call:
    """A concatenation along the channels as the sum of its inputs' channels: every layer
    after it treats channels alike, so one channel has the support of all of them, and
    DenseNet's, Inception's and NASNet's concatenations stop growing the maps the windows
    after them sum again. Along another axis, the concatenation itself."""

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        import tensorflow as tf

        rank = len(inputs[0].shape)
        if int(layer.axis) % rank != rank - 1:
            return layer.call(inputs, *args, **kwargs)
        parts = [
            t if t.shape[-1] == 1 else tf.reduce_sum(t, axis=-1, keepdims=True) for t in inputs
        ]
        shapes = [t.shape for t in parts]
        if all(shape.is_compatible_with(shapes[0]) for shape in shapes):
            return tf.add_n(parts)  # its gradient passes through, without shape operations
        return sum_of(parts)

    return call


def _merged(combine: Callable[[list[Any]], Any]) -> Call:
    """A merge of the copy (sum or mean), its inputs brought to one rank as Keras' merge
    layers do (unit axes after the batch axis)."""

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        rank = max(len(t.shape) for t in inputs)
        tensors = []
        for tensor in inputs:
            for _ in range(rank - len(tensor.shape)):
                tensor = keras.ops.expand_dims(tensor, axis=1)
            tensors.append(tensor)
        return combine(tensors)

    return call


def _unit_axes(target: tuple[int, ...]) -> Call:
    """A squeeze-excite reshape of a channel vector to ``(1, ..., 1, C)``, for any C."""

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        sizes = [int(d) if d is not None else -1 for d in inputs.shape[1:]]
        width = math.prod(sizes) // math.prod(target[:-1]) if -1 not in sizes else -1
        return keras.ops.reshape(inputs, (keras.ops.shape(inputs)[0], *target[:-1], width))

    return call
