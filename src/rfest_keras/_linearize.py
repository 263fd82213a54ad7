"""Linearization of a Keras model copy: one table, applied to configs and to layers.

The table names Keras layer classes by what they become:

- pointwise activations, softmax over the channels, normalisation, dropout and noise:
  identity; a softmax over spatial axes: its support, every input along those axes
  (:func:`softmax_by_support`);
- max pooling (plain, global, adaptive): average pooling of the same geometry;
- ``Maximum``/``Minimum`` merges: their mean; ``Subtract``: a sum (a difference of two
  positive paths could cancel where they overlap); ``Multiply``: the mean of its
  factors. A product of two functions of the input (squeeze-excite, gating) has, by the
  product rule with positive factors, the gradient support of their sum, but its
  magnitude squares at each gate: sixteen chained gates take it out of float64 range
  (``x ** 2 ** 16``). The mean keeps every value near 1;
- every ``activation=`` argument: linear;
- weights: positive constants (``1 / fan_in``), biases zero.

Functional and Sequential models are rewritten in their config before the copy is built
(:func:`linearize_config`); every layer of the built copy then goes through
:func:`linearize_layers`, which patches the *copy's* layer instances (subclassed models,
layers nested in custom layers). Nothing here touches the user's model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

__all__ = [
    "APPLICATION_LAYERS",
    "CHANNEL_BLIND",
    "ELEMENTWISE_OPERATIONS",
    "IDENTITY_LAYERS",
    "MERGES",
    "adds_unit_axes",
    "average_pool",
    "constant_value",
    "linear_call",
    "linear_merge",
    "linear_operation",
    "linearize_config",
    "linearize_layers",
    "mean_of",
    "narrow_config",
    "patch_pooling_3d",
    "set_constant_weights",
    "softmax_by_support",
    "sum_of",
]

_IDENTITY = frozenset(
    [
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "ThresholdedReLU",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "Normalization",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
    ]
)
IDENTITY_LAYERS = _IDENTITY
"""Layers that are the identity once linearized (activations, normalization, dropout)."""
_AS_AVERAGE = {
    f"{kind}MaxPooling{d}D": f"{kind}AveragePooling{d}D"
    for kind in ("", "Global", "Adaptive")
    for d in (1, 2, 3)
}
MERGES = {"Maximum": "Average", "Minimum": "Average", "Subtract": "Add", "Multiply": "Average"}
# Graph operations (``x * g`` between Keras tensors in a Functional model) swapped likewise.
_OPERATIONS = {"Multiply": "mean", "Maximum": "mean", "Minimum": "mean", "Subtract": "sum"}

# Layers whose output channels are all alike once weights are constant, or that treat
# channels alike: with them only, one channel per layer carries the same support.
_WIDTH_PARAMETER = {
    **{f"Conv{d}D": "filters" for d in (1, 2, 3)},
    **{f"Conv{d}DTranspose": "filters" for d in (1, 2, 3)},
    **{f"SeparableConv{d}D": "filters" for d in (1, 2)},
    "Dense": "units",
}
CHANNEL_BLIND = frozenset(
    {
        "InputLayer",
        "Identity",
        "Softmax",  # over the channels or along spatial axes, per channel
        "Flatten",
        "Add",
        "Multiply",
        "Average",
        "Concatenate",
        "Rescaling",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        *(f"{kind}{d}D" for kind in ("ZeroPadding", "Cropping", "UpSampling") for d in (1, 2, 3)),
        # resizing and augmentation (identity at inference: rfest calls training=False)
        "Resizing",
        "CenterCrop",
        "RandomCrop",
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
        *(f"{kind}AveragePooling{d}D" for kind in ("", "Global") for d in (1, 2, 3)),
    }
)
# Layers of keras.applications (registered, not in keras.layers) that treat channels alike.
APPLICATION_LAYERS = {"LayerScale": "projection_dim", "CustomScaleLayer": None}
# Element-wise graph operations (``x + y``, ``x * g``, ``keras.ops.relu(x)`` on Keras
# tensors; a constant operand broadcasts alike over one channel or many).
ELEMENTWISE_OPERATIONS = frozenset(
    {
        *("Add", "Multiply", "Subtract", "TrueDivide", "Divide", "Maximum", "Minimum"),
        *("Relu", "Relu6", "LeakyRelu", "Elu", "Selu", "Gelu", "Silu", "Sigmoid", "Tanh"),
        *("HardSigmoid", "HardSilu", "Softplus", "Negative", "Absolute", "Clip"),
    }
)
_WIDTH = 1
_CONTAINERS = frozenset({"Functional", "Sequential"})


_ZEROS: dict[str, Any] = {
    "module": "keras.initializers",
    "class_name": "Zeros",
    "config": {},
    "registered_name": None,
}


def _keras_layer(entry: dict[str, Any]) -> bool:
    return entry.get("module") == "keras.layers" and entry.get("registered_name") is None


def _layer_entries(config: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Every serialized layer of a model config, those of nested models included."""
    for entry in config.get("layers", []):
        yield entry
        inner = entry.get("config")
        if isinstance(inner, dict) and "layers" in inner:
            yield from _layer_entries(inner)


def linearize_config(config: dict[str, Any]) -> None:
    """Rewrite a Functional/Sequential config in place into its linearized counterpart."""
    for entry in _layer_entries(config):
        if not _keras_layer(entry):
            continue
        name, inner = entry["class_name"], entry["config"]
        keep = {k: inner[k] for k in ("name", "dtype", "trainable") if k in inner}
        if name in _IDENTITY or (name == "Softmax" and inner.get("axis", -1) in (-1, [-1])):
            entry["class_name"] = "Activation"
            entry["config"] = {**keep, "activation": "linear"}
            for node in entry.get("inbound_nodes", []):
                if isinstance(node, dict):
                    node["kwargs"] = {}
        elif name in _AS_AVERAGE:
            entry["class_name"] = _AS_AVERAGE[name]
        elif name in MERGES:
            entry["class_name"] = MERGES[name]
        elif "activation" in inner:
            inner["activation"] = "linear"
        if inner.get("use_bias") is True:
            inner["use_bias"] = False  # linearized biases are zero: no add to trace
        for key, value in inner.items():
            # set_constant_weights overwrites every float weight: drawing random initial
            # values first was a tenth of building NASNetMobile's copy
            if key.endswith("_initializer") and isinstance(value, dict):
                inner[key] = _ZEROS


def narrow_config(config: dict[str, Any]) -> bool:
    """Give every layer one output channel, in place, if that keeps the field; else False.

    With constant positive weights every channel a convolution or dense layer produces
    is the same function of the input, so one channel has the support of all of them;
    branches keep one channel each. This holds only for layers that treat channels alike,
    so any other layer (custom, reshape...) leaves the config as it
    was and returns False. Run after :func:`linearize_config`.
    """
    changes: list[tuple[dict[str, Any], str]] = []
    reshapes: list[dict[str, Any]] = []
    for entry in _layer_entries(config):
        name, module = entry["class_name"], entry.get("module") or ""
        if len(entry.get("inbound_nodes", [])) > 1:
            # a shared layer or nested model may see a narrowed and a full-width input
            return False
        if name in _CONTAINERS and module.startswith("keras"):
            continue
        inner = entry["config"]
        if module.startswith("keras.src.applications") and name in APPLICATION_LAYERS:
            key = APPLICATION_LAYERS[name]
            if key is not None:
                changes.append((inner, key))
            continue
        if module.startswith("keras.src.ops") and name in ELEMENTWISE_OPERATIONS:
            continue
        if not _keras_layer(entry):
            return False
        if name in _WIDTH_PARAMETER:
            # A grouped convolution's output channels, summed, see every input channel:
            # with one channel in, one filter in one group has the same support.
            if inner.get("groups", 1) != 1:
                changes.append((inner, "groups"))
            changes.append((inner, _WIDTH_PARAMETER[name]))
        elif name == "Reshape" and adds_unit_axes(inner.get("target_shape")):
            reshapes.append(inner)
        elif name == "Activation" and inner.get("activation") == "linear":
            continue
        elif name not in CHANNEL_BLIND:
            return False
    for inner in reshapes:
        inner["target_shape"] = [*inner["target_shape"][:-1], -1]
    _defer_nested_sequential_builds(config)
    for inner, key in changes:
        inner[key] = _WIDTH
    return True


def linear_call(layer: Any) -> Any:
    """The linear replacement of ``layer.call`` (identity, average pooling), or None."""
    name = type(layer).__name__
    if not type(layer).__module__.startswith("keras."):
        return None
    if name in _IDENTITY:
        return _identity
    if name == "Softmax":
        return softmax_by_support(layer.axis)
    if name in _AS_AVERAGE:
        return average_pool(layer, name)
    return None


def linear_merge(layer: Any) -> Any:
    """The linear replacement of a merge layer's ``_merge_function``, or None."""
    name = type(layer).__name__
    if not type(layer).__module__.startswith("keras.") or name not in MERGES:
        return None
    return sum_of if MERGES[name] == "Add" else mean_of


def linear_operation(operation: Any) -> Any:
    """The linear replacement of a graph operation's ``call`` (``x * g``...), or None."""
    kind = _OPERATIONS.get(type(operation).__name__)
    if kind is None or not type(operation).__module__.startswith("keras.src.ops"):
        return None
    combine = sum_of if kind == "sum" else mean_of
    original = operation.call

    def call(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in args if hasattr(a, "shape") and len(a.shape) > 0]
        if len(tensors) == len(args) == 2 and not kwargs:
            return combine(list(args))
        return original(*args, **kwargs)

    return call


def _defer_nested_sequential_builds(config: dict[str, Any]) -> None:
    """Nested Sequential models declare their input's channel count; narrowed, it
    changes, so they lose their input layer and build when first called."""
    for entry in config.get("layers", []):
        inner = entry.get("config")
        if entry.get("class_name") not in _CONTAINERS or not isinstance(inner, dict):
            continue
        if entry["class_name"] == "Sequential":
            inner["layers"] = [e for e in inner["layers"] if e["class_name"] != "InputLayer"]
            inner.pop("build_input_shape", None)
            entry.pop("build_config", None)
        _defer_nested_sequential_builds(inner)


def adds_unit_axes(target: Any) -> bool:
    """A reshape of a channel vector to ``(1, ..., 1, C)`` (squeeze-excite): any C does."""
    return (
        isinstance(target, (list, tuple)) and len(target) > 1 and all(d == 1 for d in target[:-1])
    )


def linearize_layers(model: keras.Model) -> None:
    """Patch the layers and graph operations of a model copy in place."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for operation in (
            getattr(layer, "_operations", []) if hasattr(layer, "_run_through_graph") else []
        ):
            swapped = linear_operation(operation)
            if swapped is not None:
                operation.call = swapped
    for layer in model._flatten_layers(include_self=False, recursive=True):
        call = linear_call(layer)
        if call is not None:
            layer.call = call
        merge = linear_merge(layer)
        if merge is not None:
            layer._merge_function = merge
        if callable(getattr(layer, "activation", None)):
            layer.activation = keras.activations.linear


def set_constant_weights(model: keras.Model) -> None:
    """Kernels ``1 / fan_in``, biases and offsets 0, scales 1 (float variables only)."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        transpose = type(layer).__name__.endswith("Transpose")
        for variable in (*layer._trainable_variables, *layer._non_trainable_variables):
            dtype = keras.backend.standardize_dtype(variable.dtype)
            if not dtype.startswith(("float", "bfloat")):
                continue
            shape = tuple(int(s) for s in variable.shape)
            variable.assign(np.full(shape, constant_value(variable.path, shape, transpose), dtype))


def constant_value(path: str, shape: tuple[int, ...], transpose: bool) -> float:
    """The constant a linearized variable takes (by its name and shape)."""
    leaf = path.rpartition("/")[2]
    if "bias" in leaf or leaf in ("beta", "offset", "moving_mean", "mean"):
        return 0.0
    if len(shape) < 2 or leaf in ("gamma", "scale", "moving_variance", "variance"):
        return 1.0
    size = math.prod(shape)
    if leaf == "depthwise_kernel":
        return 1.0 / (size // (shape[-2] * shape[-1]))
    return 1.0 / (size // (shape[-2] if transpose else shape[-1]))


def _no_float64_pool_3d(inputs: Any, dtype: str) -> bool:
    """TensorFlow has no float64 3-D pooling kernel on CPU; pool in float32 there."""
    return keras.backend.backend() == "tensorflow" and len(inputs.shape) == 5 and dtype == "float64"


def patch_pooling_3d(model: keras.Model) -> None:
    """Let a float64 copy's ``AveragePooling3D`` layers run on TensorFlow's CPU kernels."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer).__name__ == "AveragePooling3D":
            layer.call = average_pool(layer, "MaxPooling3D")


def _identity(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    return inputs


def softmax_by_support(axis: int | Sequence[int]) -> Any:
    """A ``Softmax`` layer's ``call`` by its support (as ``rfest_torch`` linearizes
    ``F.softmax``): each output depends on every input along ``axis``, so along spatial
    axes it is the input plus its mean over them, positive, and the field is global
    there. Over the channel axis alone it is the identity (channels are not a field's
    axes). Masked entries (Keras' ``mask``) stay out, as in the layer: an output there is
    0, and no other output depends on them."""
    wanted = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)

    def call(inputs: Any, mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        rank = len(inputs.shape)
        axes = tuple(sorted({int(a) % rank for a in wanted}))
        if axes == (rank - 1,):
            return inputs
        if mask is None:
            spread = keras.ops.mean(inputs, axis=axes, keepdims=True)
            return keras.ops.multiply(keras.ops.add(inputs, spread), 0.5)
        if keras.backend.standardize_dtype(mask.dtype) != "bool":
            mask = keras.ops.greater(mask, 0.5)  # as the layer reads it
        kept = keras.ops.where(mask, inputs, 0)
        spread = keras.ops.mean(kept, axis=axes, keepdims=True)
        return keras.ops.where(mask, keras.ops.multiply(keras.ops.add(kept, spread), 0.5), 0)

    return call


def sum_of(inputs: list[Any]) -> Any:
    """The sum of a merge's inputs (broadcasting as ``keras.ops.add`` does)."""
    total = inputs[0]
    for x in inputs[1:]:
        total = keras.ops.add(total, x)
    return total


def mean_of(inputs: list[Any]) -> Any:
    """The mean of a merge's inputs: what a linearized product, maximum or minimum is.

    A product by ``1 / n``, not a division by ``n``: TensorFlow's gradient of a product by
    a constant scalar is one operation, a division's eight (MobileNetV3Small's nine gates:
    over a tenth of its trace)."""
    return keras.ops.multiply(sum_of(inputs), 1 / len(inputs))


def average_pool(layer: Any, name: str) -> Any:
    """A ``call`` averaging over the windows (or the whole extent, ``name`` ``Global...``)
    of pooling ``layer``; float64 3-D windows pool in float32 on TensorFlow."""
    data_format = getattr(layer, "data_format", "channels_last")
    if name.startswith("Global"):
        keepdims = bool(getattr(layer, "keepdims", False))

        def global_mean(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            rank = len(inputs.shape)
            axes = (
                tuple(range(1, rank - 1))
                if data_format == "channels_last"
                else tuple(range(2, rank))
            )
            return keras.ops.mean(inputs, axis=axes, keepdims=keepdims)

        return global_mean
    if name.startswith("Adaptive"):
        average = getattr(keras.layers, _AS_AVERAGE[name])(
            layer.output_size, data_format=data_format, dtype=layer.dtype_policy
        )
        return lambda inputs, *args, **kwargs: average(inputs)

    def window_mean(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if _no_float64_pool_3d(inputs, dtype):
            inputs = keras.ops.cast(inputs, "float32")
        pooled = keras.ops.average_pool(
            inputs, layer.pool_size, layer.strides, layer.padding, data_format
        )
        return keras.ops.cast(pooled, dtype)

    return window_mean
