"""The Keras 3 :class:`rfest.GradientProvider`, on whichever framework runs Keras.

rfest measures a copy of the model (see :mod:`rfest_keras._rebuild`), built once with
free spatial sizes when the model allows it, else once per probe size (cached). The
user's model is only read; Keras' floatx and dtype policy are restored after each copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from rfest import (
    BackendError,
    InputShapeError,
    ModelCallError,
    OutputNotFoundError,
    RFEstError,
    kit,
)
from rfest.kit import MODEL_OUTPUT
from rfest_keras._autodiff import precision, supported, vjp
from rfest_keras._rebuild import Built, build_copy, finish, is_graph_model, own

__all__ = ["MODEL_OUTPUT", "KerasGradientProvider", "provider"]


_lock = threading.RLock()


def provider(model: Any, **options: Any) -> KerasGradientProvider:
    """Entry-point factory of the ``keras`` backend (see :class:`KerasGradientProvider`)."""
    return KerasGradientProvider(model, **options)


class KerasGradientProvider:
    """Gradient maps of a Keras 3 model's layers, by the framework's own autodiff.

    Args:
        model: a Functional or Sequential ``keras.Model``, a subclassed one (copied with
            ``from_config(get_config())``), or a build function ``f(input_shape) -> Model``.
        input_shape: ``(*spatial, C)`` of one sample, channels last; spatial sizes may be
            None. Optional when the model declares its input.
        output: None (the model's output), a layer name, or a list of layer names.
        dtype: ``"float64"`` (default) or ``"float32"``.
        linearize: see :func:`rfest.compute`.
        input: the name of the input to measure, for models with several inputs (the
            others are fed ones).
        narrow: measure the linearized copy with one channel per layer when every layer
            treats channels alike (same support, far less work); False keeps widths.

    Example:
        >>> import keras
        >>> import rfest
        >>> net = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
        ...                         keras.layers.MaxPooling2D(2, name="pool")])
        >>> rf = rfest.compute(net, (32, 32, 3), output="pool")
        >>> rf.size, rf.stride, rf.padding
        ((4, 4), (2, 2), (0, 0))
    """

    float32_scout = False
    """A float32 scout would be a second rebuild of the model, costlier than it saves."""

    def __init__(
        self,
        model: Any,
        *,
        input_shape: Sequence[int | None] | None = None,
        output: str | Sequence[str] | None = None,
        dtype: str = "float64",
        linearize: bool = True,
        input: str | None = None,
        narrow: bool = True,
    ) -> None:
        if not supported():
            raise BackendError(
                f"Keras runs on {keras.backend.backend()!r}, which has no gradients rfest can "
                f"use; set KERAS_BACKEND to tensorflow, jax or torch before importing keras"
            )
        kit.check_dtype(dtype)
        self._dtype, self._linearize, self._narrow = dtype, linearize, narrow
        self._build_function: Callable[[tuple[int | None, ...]], Any] | None = None
        if isinstance(model, keras.Model):
            self._model = model
        elif callable(model):
            self._build_function = model
            self._model = self._call_build_function(_required(input_shape, "a build function"))
        else:
            raise TypeError(
                f"the keras backend takes a keras.Model or a build function f(input_shape) -> "
                f"Model, not {type(model).__name__}"
            )
        self._input_index = self._resolve_input(input)
        self._channels, self._spatial = self._resolve_input_shape(input_shape)
        self._layers_of = kit.resolve_outputs(
            output,
            self.layer_names,
            naming=" Names are Keras layer names",
        )
        self._outputs = tuple(self._layers_of)
        self._dynamic: Built | None = None
        self._dynamic_tried = False
        self._copies: dict[tuple[int, ...], Built] = {}
        self._shapes: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._spatial

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def layer_names(self) -> tuple[str, ...]:
        return tuple(
            layer.name for layer in self._model.layers if type(layer).__name__ != "InputLayer"
        )

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if spatial_shape not in self._shapes:
            # Symbolic: shapes without computing, and sizes too small for the model fail
            # in Keras' shape checks instead of inside a framework kernel.
            x = keras.KerasTensor((1, *spatial_shape, self._channels), dtype=self._dtype)
            self._shapes[spatial_shape] = {
                name: self._spatial_of(
                    name, tuple(self._run(spatial_shape, name, x).shape), len(spatial_shape)
                )
                for name in self._outputs
            }
        return self._shapes[spatial_shape]

    def gradient_maps(
        self,
        spatial_shape: tuple[int, ...],
        output_name: str,
        units: Sequence[tuple[int, ...]],
    ) -> np.ndarray:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        x = self._probe_input((len(units), *spatial_shape, self._channels))

        def cotangent(shape: tuple[int, ...]) -> np.ndarray:
            seed = np.zeros(shape)
            for k, unit in enumerate(units):
                seed[(k, *unit)] = 1.0
            return seed

        grad = self._vjp(spatial_shape, output_name, x, cotangent)
        maps: np.ndarray = np.abs(grad).sum(axis=-1)
        return maps

    def input_gradients(
        self, inputs: np.ndarray, output_name: str, unit: tuple[int, ...]
    ) -> np.ndarray:
        x = np.asarray(inputs, dtype=self._dtype)
        if x.ndim != len(self._spatial) + 2 or x.shape[-1] != self._channels:
            raise InputShapeError(
                f"inputs of shape {x.shape} do not match input_shape "
                f"{(*self._spatial, self._channels)}; pass a batch (N, *spatial, C)"
            )

        def cotangent(shape: tuple[int, ...]) -> np.ndarray:
            seed = np.zeros(shape)
            index: tuple[Any, ...] = (slice(None), *unit)
            seed[index] = 1.0
            return seed

        grad = self._vjp(tuple(x.shape[1:-1]), output_name, x, cotangent)
        return np.moveaxis(grad, -1, 1)

    def _vjp(
        self,
        spatial: tuple[int, ...],
        name: str,
        x: np.ndarray,
        cotangent: Callable[[tuple[int, ...]], np.ndarray],
    ) -> np.ndarray:
        with _lock, precision(self._dtype):
            function = self._function(spatial, name)
            try:
                return vjp(function, x.astype(self._dtype), cotangent)
            except RFEstError:
                raise
            except Exception as exc:
                raise self._call_error(x.shape, exc) from exc

    def _run(self, spatial: tuple[int, ...], name: str, x: Any) -> Any:
        with _lock, precision(self._dtype):
            function = self._function(spatial, name)
            try:
                return function(x)
            except RFEstError:
                raise
            except Exception as exc:
                raise self._call_error(tuple(x.shape), exc) from exc

    def _probe_input(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._linearize:
            return np.ones(shape)
        return 0.5 + np.random.default_rng(0).random(shape)

    def _function(self, spatial: tuple[int, ...], name: str) -> Callable[[Any], Any]:
        built = self._copy_for(spatial)
        if built.graph:
            head = self._head(built, name)
            feeds = self._feeds(built)
            return lambda x: head(feeds(x), training=False)
        return self._captured(built, name)

    def _copy_for(self, spatial: tuple[int, ...]) -> Built:
        owned = self._build_function is not None and not is_graph_model(self._model)
        if not self._dynamic_tried and not owned:
            self._dynamic_tried = True
            try:
                self._dynamic = self._build(self._model, [None] * len(spatial))
            except Exception:
                if not is_graph_model(self._model):
                    raise
                self._dynamic = None
        if self._dynamic is not None:
            built = self._dynamic
        else:
            if spatial not in self._copies:
                if owned:
                    source = self._call_build_function((*spatial, self._channels))
                    self._copies[spatial] = own(source, linearize=self._linearize)
                else:
                    self._copies[spatial] = self._build(self._model, list(spatial))
            built = self._copies[spatial]
        if not built.weights_set:
            self._build_subclassed(built, spatial)
        return built

    def _build(self, source: keras.Model, spatial: list[int | None]) -> Built:
        try:
            return build_copy(
                source,
                spatial,
                self._input_index,
                dtype=self._dtype,
                linearize=self._linearize,
                narrow=self._narrow,
            )
        except RFEstError:
            raise
        except Exception as exc:
            raise self._call_error((None, *spatial, self._channels), exc) from exc

    def _build_subclassed(self, built: Built, spatial: tuple[int, ...]) -> None:
        x = keras.ops.convert_to_tensor(np.ones((1, *spatial, self._channels), self._dtype))
        try:
            built.model(x, training=False)
        except Exception as exc:
            raise self._call_error(x.shape, exc) from exc
        finish(built, self._model, dtype=self._dtype, linearize=self._linearize)

    def _head(self, built: Built, name: str) -> keras.Model:
        heads: dict[str, keras.Model] = built.__dict__.setdefault("heads", {})
        if name not in heads:
            model = built.model
            if self._layers_of.get(name, name) is None:
                if len(model.outputs) != 1:
                    raise OutputNotFoundError(
                        f"the model has {len(model.outputs)} outputs; name the layer whose "
                        f"output you want with output='...'"
                    )
                tensor = model.outputs[0]
            else:
                try:
                    tensor = model.get_layer(name).output
                except (AttributeError, ValueError) as exc:
                    raise OutputNotFoundError(
                        f"layer {name!r} has no single output (it is called more than once "
                        f"in the model, or returns several tensors): {exc}"
                    ) from exc
            heads[name] = keras.Model(model.inputs, tensor)
        return heads[name]

    def _feeds(self, built: Built) -> Callable[[Any], Any]:
        inputs = built.model.inputs
        if len(inputs) == 1:
            return lambda x: x
        index = self._input_index

        def feed(x: Any) -> list[Any]:
            batch, spatial = int(x.shape[0]), tuple(int(s) for s in x.shape[1:-1])
            values: list[Any] = []
            for i, tensor in enumerate(inputs):
                if i == index:
                    values.append(x)
                    continue
                shape = list(tensor.shape[1:])
                if None in shape:
                    if len(shape) != len(spatial) + 1 or shape[-1] is None:
                        raise InputShapeError(
                            f"input {i} of the model has free sizes {tuple(shape)} that rfest "
                            f"cannot choose; give it fixed sizes"
                        )
                    shape = [*spatial, shape[-1]]
                if isinstance(x, keras.KerasTensor):
                    values.append(keras.KerasTensor((batch, *shape), dtype=self._dtype))
                else:
                    values.append(keras.ops.ones((batch, *shape), dtype=self._dtype))
            return values

        return feed

    def _captured(self, built: Built, name: str) -> Callable[[Any], Any]:
        model = built.model
        if self._layers_of.get(name, name) is None:
            return lambda x: model(x, training=False)
        layer = _find_layer(model, name)
        captured: dict[str, Any] = built.__dict__.setdefault("captured", {})
        if not getattr(layer, "_rfest_capturing", False):
            call = layer.call

            def capture(*args: Any, **kwargs: Any) -> Any:
                result = call(*args, **kwargs)
                captured.setdefault(layer.name, result)
                return result

            layer.call = capture
            layer._rfest_capturing = True

        def function(x: Any) -> Any:
            captured.clear()
            model(x, training=False)
            if layer.name not in captured:
                raise OutputNotFoundError(
                    f"layer {name!r} did not run when the model was called; choose a layer "
                    f"on the path from input to output"
                )
            return captured.pop(layer.name)

        return function

    def _call_build_function(self, shape: tuple[int | None, ...]) -> keras.Model:
        assert self._build_function is not None
        try:
            model = self._build_function(tuple(shape))
        except Exception as exc:
            raise ModelCallError(
                f"the build function raised {type(exc).__name__} for input_shape={shape}: {exc}"
            ) from exc
        if not isinstance(model, keras.Model):
            raise ModelCallError(
                f"the build function returned a {type(model).__name__} for input_shape="
                f"{shape}; expected a keras.Model"
            )
        return model

    def _resolve_input(self, name: str | None) -> int:
        if not is_graph_model(self._model) or not self._model.inputs:
            if name is not None:
                raise InputShapeError(
                    f"input={name!r} names an input, but this model does not declare its "
                    f"inputs; leave input= out"
                )
            return 0
        names = [t._keras_history.operation.name for t in self._model.inputs]
        if name is None:
            if len(names) > 1:
                raise InputShapeError(
                    f"the model has {len(names)} inputs {names}; say which one to measure "
                    f"with input='...' (the others are fed ones)"
                )
            return 0
        if name not in names:
            raise InputShapeError(f"input={name!r} is not one of the model's inputs {names}")
        return names.index(name)

    def _declared_shape(self) -> tuple[int | None, ...] | None:
        if is_graph_model(self._model) and self._model.inputs:
            shape = self._model.inputs[self._input_index].shape
            return tuple(None if s is None else int(s) for s in shape[1:])
        return None

    def _resolve_input_shape(
        self, input_shape: Sequence[int | None] | None
    ) -> tuple[int, tuple[int | None, ...]]:
        declared = self._declared_shape()
        if input_shape is None:
            if declared is None:
                raise InputShapeError(
                    "this Keras model does not declare its input size: pass "
                    "input_shape=(*spatial, C), channels last, e.g. (224, 224, 3); spatial "
                    "sizes may be None"
                )
            input_shape = declared
        shape = tuple(input_shape)
        if not 2 <= len(shape) <= 4:
            raise InputShapeError(
                f"input_shape={shape} has {len(shape)} axes; expected (*spatial, C) with 1 to "
                f"3 spatial axes, channels last, without the batch axis, e.g. (224, 224, 3)"
            )
        channels = shape[-1]
        if (
            isinstance(channels, bool)
            or not isinstance(channels, (int, np.integer))
            or (channels < 1)
        ):
            raise InputShapeError(
                f"input_shape={shape}: the channel count {channels!r} must be a positive int "
                f"(Keras layout is (*spatial, C), channels last)"
            )
        if declared is not None and (
            len(declared) != len(shape) or declared[-1] not in (None, channels)
        ):
            raise InputShapeError(
                f"input_shape={shape} does not match the model's declared input "
                f"{declared} (channels last, without the batch axis)"
            )
        return int(channels), shape[:-1]

    def _spatial_of(self, name: str, shape: tuple[int, ...], axes: int) -> tuple[int, ...]:
        return kit.output_spatial_shape(name, shape, axes, "channels_last")

    def _call_error(self, shape: tuple[Any, ...], exc: Exception) -> RFEstError:
        hint = (
            " A subclassed model built for a fixed input size cannot be resized: pass a "
            "build function f(input_shape) -> Model instead"
            if not is_graph_model(self._model) and self._build_function is None
            else ""
        )
        return ModelCallError(
            f"the Keras model raised {type(exc).__name__} on an input of shape {tuple(shape)} "
            f"(batch, *spatial, channels): {exc}. Check that input_shape=(*spatial, C) "
            f"matches what the model takes.{hint}"
        )


def _required(input_shape: Sequence[int | None] | None, what: str) -> tuple[int | None, ...]:
    if input_shape is None:
        raise InputShapeError(
            f"{what} needs input_shape=(*spatial, C), channels last, e.g. (96, 96, 3)"
        )
    return tuple(input_shape)


def _find_layer(model: keras.Model, name: str) -> Any:
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == name:
            return layer
    raise OutputNotFoundError(f"the model copy has no layer named {name!r}")
