"""Copies of a Keras model at a chosen input size and dtype; the user's model is only read.

Functional and Sequential models are copied from their config: the measured input's
spatial sizes are rewritten (``None`` when one copy can serve every probe size), every
layer's dtype policy becomes the requested float, ``build_config`` is dropped so layers
build at the new size, and the config is linearized (and narrowed, see
:func:`rfest_keras._linearize.narrow_config`) before ``from_config``. Subclassed models are
copied with ``type(model).from_config(model.get_config())``.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from rfest import ModelCallError
from rfest_keras._autodiff import to_numpy
from rfest_keras._linearize import (
    linearize_config,
    linearize_layers,
    narrow_config,
    patch_pooling_3d,
    set_constant_weights,
)
from rfest_keras._state import float_policy

__all__ = ["Built", "build_copy", "finish", "is_graph_model", "own"]

_FLOATS = ("float16", "bfloat16", "float32", "float64")


@dataclass
class Built:
    """A model copy and whether its weights are set yet (subclassed copies build late)."""

    model: keras.Model
    graph: bool
    narrowed: bool
    weights_set: bool


def is_graph_model(model: Any) -> bool:
    """True for a plain Functional or Sequential model (copied through its config)."""
    return type(model).__name__ in ("Functional", "Sequential") and type(
        model
    ).__module__.startswith("keras.")


def build_copy(
    model: keras.Model,
    spatial: Sequence[int | None] | None,
    input_index: int,
    *,
    dtype: str,
    linearize: bool,
    narrow: bool,
) -> Built:
    """A copy of ``model`` (measured input's spatial sizes ``spatial``; None keeps them)."""
    if not is_graph_model(model):
        return _subclassed_copy(model, dtype=dtype, linearize=linearize)
    config = _copy.deepcopy(model.get_config())
    _set_dtypes(config, dtype)
    if spatial is not None:
        _set_input_size(config, type(model).__name__, input_index, spatial)
        _free_nested_inputs(config)
    narrowed = False
    if linearize:
        linearize_config(config)
        if narrow:
            narrowed = narrow_config(config)
    with float_policy(dtype):
        clone = type(model).from_config(config)
    built = Built(clone, graph=True, narrowed=narrowed, weights_set=False)
    finish(built, model, dtype=dtype, linearize=linearize)
    return built


def finish(built: Built, source: keras.Model, *, dtype: str, linearize: bool) -> None:
    """Linearize the copy's layers and set its weights (once it is built)."""
    if built.weights_set:
        return
    patch_pooling_3d(built.model)
    if linearize:
        linearize_layers(built.model)
        set_constant_weights(built.model)
    else:
        _copy_weights(source, built.model, dtype)
    built.weights_set = True


def own(model: keras.Model, *, linearize: bool) -> Built:
    """Use a model rfest built itself (from a build function) without copying it."""
    if linearize:
        linearize_layers(model)
    return Built(model, graph=False, narrowed=False, weights_set=False)


def _subclassed_copy(model: keras.Model, *, dtype: str, linearize: bool) -> Built:
    try:
        config = model.get_config()
        with float_policy(dtype):
            clone = type(model).from_config(config)
    except Exception as exc:
        raise ModelCallError(
            f"rfest measures a copy of your model and could not copy this "
            f"{type(model).__name__} (a subclassed keras.Model) with "
            f"from_config(get_config()): {type(exc).__name__}: {exc}. Implement get_config, "
            f"or pass a build function f(input_shape) -> Model instead of the model"
        ) from exc
    if linearize:
        linearize_layers(clone)
    return Built(clone, graph=False, narrowed=False, weights_set=False)


def _copy_weights(source: keras.Model, target: keras.Model, dtype: str) -> None:
    values = [to_numpy(v) for v in source.weights]
    if len(values) != len(target.weights) or any(
        tuple(v.shape) != tuple(w.shape) for v, w in zip(values, target.weights, strict=False)
    ):
        raise ModelCallError(
            f"linearize=False measures the model with its own weights, but a copy at this "
            f"input size has weights of other shapes ({len(target.weights)} variables vs "
            f"{len(values)}); the weights depend on the input size. Measure at the model's "
            f"own input size, or use linearize=True"
        )
    for value, variable in zip(values, target.weights, strict=True):
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(dtype)
        variable.assign(value)


def _set_dtypes(config: Any, dtype: str) -> None:
    if isinstance(config, dict):
        inner = config.get("config")
        if (
            "class_name" in config
            and isinstance(inner, dict)
            and _is_float_policy(inner.get("dtype", 0))
        ):
            inner["dtype"] = dtype
        for value in config.values():
            _set_dtypes(value, dtype)
    elif isinstance(config, list):
        for value in config:
            _set_dtypes(value, dtype)


def _is_float_policy(policy: Any) -> bool:
    if isinstance(policy, str):
        return policy in _FLOATS or policy.startswith("mixed_")
    if isinstance(policy, dict):
        name = policy.get("config", {}).get("name", "")
        return isinstance(name, str) and (name in _FLOATS or name.startswith("mixed_"))
    return policy is None


def _free_nested_inputs(config: dict[str, Any]) -> None:
    """Nested Functional/Sequential models (an Application used as a backbone) take any
    spatial size in the copy; one whose layers need its own size fails to build, and the
    live route measures the model instead."""
    for entry in config.get("layers", []):
        inner = entry.get("config")
        if entry.get("class_name") not in ("Functional", "Sequential") or not isinstance(
            inner, dict
        ):
            continue
        entry.pop("build_config", None)
        for layer in inner.get("layers", []):
            layer.pop("build_config", None)
            if layer.get("class_name") == "InputLayer":
                shape = layer["config"].get("batch_shape")
                if shape is not None and len(shape) > 2:
                    layer["config"]["batch_shape"] = _free(shape)
        if inner.get("build_input_shape") is not None:
            inner["build_input_shape"] = _free(inner["build_input_shape"])
        _free_nested_inputs(inner)


def _free(shape: Sequence[Any]) -> list[Any]:
    return [shape[0], *([None] * (len(shape) - 2)), shape[-1]]


def _set_input_size(
    config: dict[str, Any], kind: str, input_index: int, spatial: Sequence[int | None]
) -> None:
    for entry in config["layers"]:
        entry.pop("build_config", None)
    if kind == "Sequential":
        first = config["layers"][0] if config["layers"] else None
        if first is not None and first["class_name"] == "InputLayer":
            shape = first["config"]["batch_shape"]
            first["config"]["batch_shape"] = [shape[0], *spatial, shape[-1]]
        elif config.get("build_input_shape") is not None:
            shape = config["build_input_shape"]
            config["build_input_shape"] = [shape[0], *spatial, shape[-1]]
        return
    names = config["input_layers"]
    if names and isinstance(names[0], str):
        names = [names]
    wanted = names[input_index][0]
    inputs = [e for e in config["layers"] if e["class_name"] == "InputLayer"]
    declared = [e["config"]["batch_shape"][1:-1] for e in inputs if e["config"]["name"] == wanted]
    for entry in inputs:
        shape = entry["config"]["batch_shape"]
        # a twin of the measured input (siamese towers, image pairs) follows its size
        if entry["config"]["name"] == wanted or [shape[1:-1]] == declared:
            entry["config"]["batch_shape"] = [shape[0], *spatial, shape[-1]]
