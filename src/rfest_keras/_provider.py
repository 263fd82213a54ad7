"""The Keras 3 :class:`rfest.GradientProvider`, on whichever framework runs Keras.

Three routes, chosen per model (and per probe size) without the user asking:

- **narrowed** (:mod:`rfest_keras._narrow`, TensorFlow): the user's own graph, walked
  with one channel per layer. For Functional and Sequential models made of Keras' built-in
  layers (the whole ``keras.applications`` catalogue): no copy is built, no variable is
  read, and only the layers' dtype policies are swapped while the program is traced.
- **live** (:mod:`rfest_keras._live`): the user's model itself, called with substituted
  variables and swapped layer behaviour that are all undone after each call. It runs
  every model Keras can call: subclassed models without ``get_config``, nested models,
  shared layers, Lambda and custom layers.
- **copy** (:mod:`rfest_keras._rebuild`): a linearized copy rebuilt from the config of a
  Functional/Sequential model. Used where it is the better tool: when every layer treats
  channels alike the copy has one channel per layer (far cheaper than the live model's
  full width), and a model whose head fixes the input size (``Flatten`` + ``Dense``) is
  rebuilt at each probe size.

The user's model is only read; Keras' floatx and dtype policy are restored after each copy.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from rfest import (
    BackendError,
    InputShapeError,
    ModelCallError,
    OptionError,
    OutputNotFoundError,
    RFEstError,
    kit,
)
from rfest.kit import MODEL_OUTPUT
from rfest_keras._alike import axes_alike
from rfest_keras._autodiff import Compiled, compiled, precision, supported, vjp
from rfest_keras._graph import direct_runnable, run_graph, weight_values
from rfest_keras._live import LiveModel, layer_calls, nth_call
from rfest_keras._memory import DEFAULT_MAX_MEMORY_GIB, Budget, count_elements, run_counting
from rfest_keras._narrow import narrowable, run_narrowed
from rfest_keras._rebuild import Built, build_copy, finish, is_graph_model, own
from rfest_keras._tf_quirks import onednn_active

if TYPE_CHECKING:
    from rfest_keras._on_jax import KerasOnJax

__all__ = ["MODEL_OUTPUT", "KerasGradientProvider", "provider"]


_lock = threading.RLock()
_MAX_PROGRAMS = 4
"""Outputs measured with compiled programs in one call; more (a report of every layer)
stay eager: each program costs a trace of the model, several eager passes' worth."""
_copy_refused: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_SHAPES_NOT_AT_INFERENCE = frozenset({"RandomCrop"})
"""Layers whose symbolic output shape is not their inference output: Keras 3.15's
``RandomCrop`` declares the crop size but passes its input through at inference (Keras
3.3 resized to it); their models' shapes come from running them."""


def provider(model: Any, **options: Any) -> KerasGradientProvider | KerasOnJax:
    """Entry-point factory of the ``keras`` backend (see :class:`KerasGradientProvider`).

    The framework under Keras decides how a built model is measured: on JAX through a
    jaxpr of the model (:mod:`rfest_keras._on_jax`), elsewhere by the routes below.
    """
    measured = KerasGradientProvider(model, **options)
    if keras.backend.backend() == "jax" and measured._model.built:
        from rfest_keras._on_jax import KerasOnJax

        return KerasOnJax(measured)
    return measured


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
        max_memory_gib: what one probe's activations and gradients may take (default
            2). Known before a probe is allocated (a batch-1 pass counts the values the
            model keeps per input pixel): units are then probed in smaller batches, and a
            probe too large even for one unit raises ``ProbeSizeError``.

    Example:
        >>> import keras
        >>> import rfest
        >>> net = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
        ...                         keras.layers.MaxPooling2D(2, name="pool")])
        >>> rf = rfest.compute(net, (32, 32, 3), output="pool")
        >>> rf.size, rf.stride, rf.padding
        ((4, 4), (2, 2), (0, 0))
    """

    @property
    def float32_scout(self) -> bool:
        """Scout in float32 on the live route (the same model, other substitutes); a copy
        would have to be rebuilt, which costs about what the scouting saves. Not where
        TensorFlow would run float32 through oneDNN (see :mod:`rfest_keras._tf_quirks`)."""
        if keras.backend.backend() == "tensorflow" and onednn_active():
            return False
        self._choose_route(len(self._spatial))
        return self._live is not None

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
        max_memory_gib: float = DEFAULT_MAX_MEMORY_GIB,
    ) -> None:
        if not supported():
            raise BackendError(
                f"Keras runs on {keras.backend.backend()!r}, which has no gradients rfest can "
                f"use; set KERAS_BACKEND to tensorflow, jax or torch before importing keras"
            )
        kit.check_dtype(dtype)
        self._dtype, self._linearize, self._narrow = dtype, linearize, narrow
        if (
            isinstance(max_memory_gib, bool)
            or not isinstance(max_memory_gib, (int, float))
            or not max_memory_gib > 0
        ):
            raise OptionError(
                f"max_memory_gib={max_memory_gib!r} must be a positive number of GiB (what "
                f"one probe may take), e.g. max_memory_gib=2"
            )
        self._budget = Budget(float(max_memory_gib), np.dtype(dtype).itemsize)
        self._footprint_tried = False
        self._build_function: Callable[[tuple[int | None, ...]], Any] | None = None
        _refuse_keras_2(model)
        if isinstance(model, keras.Sequential) and not _has_inputs(model):
            # not built and no Input: build a copy at the size given (the user's stays as is)
            self._build_function = _sequential_at(model)
            self._model = self._call_build_function(
                _required(input_shape, "a Sequential model without an Input (not built yet)")
            )
        elif isinstance(model, keras.Model):
            self._model = model
        elif callable(model):
            self._build_function = model
            self._model = self._call_build_function(_required(input_shape, "a build function"))
        else:
            raise TypeError(
                f"the keras backend takes a keras.Model or a build function f(input_shape) -> "
                f"Model, not {type(model).__name__}"
            )
        _refuse_channels_first(self._model)
        self._input_index = self._resolve_input(input)
        self._channels, self._spatial = self._resolve_input_shape(input_shape)
        self._layers_of = kit.resolve_outputs(
            output,
            self._known_outputs(output),
            naming=" Names are Keras layer names at any depth; 'name:k' is the k-th call of "
            "a shared layer",
        )
        self._outputs = tuple(self._layers_of)
        self._dynamic: Built | None = None
        self._dynamic_tried = False
        self._copies: dict[tuple[int, ...], Built] = {}
        self._live: LiveModel | None = None
        self._route_chosen = False
        self._alike: bool | None = None
        self._narrowed = False  # the user's own graph, one channel per layer (TensorFlow)
        self._narrowed_failed = False
        self._live_refused: set[tuple[int, ...]] = set()
        self._live_result: Any = None
        self._shapes: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}
        self._refused_sizes: dict[tuple[int, ...], ModelCallError] = {}
        self._compiled: dict[str, Compiled | None] = {}
        self._copy_ran = False  # the copy has run at some size

    def axes_alike(self, output_name: str) -> bool:
        """Whether the output treats its spatial axes alike (:mod:`rfest_keras._alike`):
        proved for a one-input graph on TensorFlow's narrowed route, whose every layer is
        the same along every axis; the estimator then measures one of two equal axes."""
        if self._alike is None:
            self._choose_route(len(self._spatial))
            self._alike = (
                self._narrowed
                and self._linearize
                and len(self._model.inputs) == 1
                and axes_alike(self._model)
            )
        return self._alike

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._spatial

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def layer_names(self) -> tuple[str, ...]:
        """Every layer name at any depth (layers of nested models included), in order."""
        return tuple(layer_calls(self._model))

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        refused = self._refused_sizes.get(spatial_shape)
        if refused is not None:
            # once refused, always: another route's shapes (a copy's, or a batch of 0 that
            # a reshape to a fixed size accepts) would send the estimator to a size the
            # model then refuses to be probed at
            raise refused
        try:
            return self._output_shapes(spatial_shape)
        except ModelCallError as exc:
            self._refused_sizes[spatial_shape] = exc
            raise

    def _output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        if spatial_shape not in self._shapes:
            shapes = self._program_shapes(spatial_shape)
            if shapes is not None:
                self._shapes[spatial_shape] = shapes
                return shapes
            # Symbolic: shapes without computing, and sizes too small for the model fail
            # in Keras' shape checks instead of inside a framework kernel.
            x: Any = keras.KerasTensor((1, *spatial_shape, self._channels), dtype=self._dtype)
            if self._is_live(spatial_shape) or not self._symbolic(spatial_shape):
                # A symbolic call would add nodes to the user's model, and would not run
                # the captured layers' calls: run it eagerly.
                x = np.ones((1, *spatial_shape, self._channels), self._dtype)
            self._shapes[spatial_shape] = {
                name: self._spatial_of(
                    name, tuple(self._run(spatial_shape, name, x).shape), len(spatial_shape)
                )
                for name in self._outputs
            }
        return self._shapes[spatial_shape]

    def _program_shapes(self, spatial: tuple[int, ...]) -> dict[str, tuple[int, ...]] | None:
        """Output shapes from the compiled programs (a batch-1 run costs less than Keras'
        symbolic pass through a thousand layers); None sends the caller to Keras."""
        shapes = {}
        for name in self._outputs:
            program = self._program(spatial, name)
            if program is None:
                return None
            shape: tuple[int, ...] | None = None
            if self._budget.per_pixel is not None:
                # a batch of 0 has the shapes without the arithmetic (some layers, a
                # reshape to (1, 1, -1), need one sample)
                with contextlib.suppress(Exception), _lock:
                    shape, _ = program.output_shape(np.ones((0, *spatial, self._channels)))
            if shape is None:
                try:
                    with _lock:
                        shape, elements = program.output_shape(
                            np.ones((1, *spatial, self._channels))
                        )
                except Exception as exc:
                    if self._narrowed:
                        return self._narrowed_refused(spatial, exc)
                    return None  # a size the model refuses: Keras says why
                if self._budget.per_pixel is None:
                    self._footprint_tried = True
                    self._budget.measured(elements, math.prod(spatial), self._channels)
            shapes[name] = self._spatial_of(name, shape, len(spatial))
        return shapes

    def gradient_maps(
        self,
        spatial_shape: tuple[int, ...],
        output_name: str,
        units: Sequence[tuple[int, ...]],
    ) -> np.ndarray:
        spatial_shape = tuple(int(s) for s in spatial_shape)
        self._measure_footprint(spatial_shape, output_name)
        return self._budget.in_batches(
            spatial_shape, units, lambda batch: self._maps(spatial_shape, output_name, batch)
        )

    def _maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        x = self._probe_input((len(units), *spatial_shape, self._channels))
        program = self._program(spatial_shape, output_name)
        if program is not None:
            try:
                with _lock:
                    return program.maps(x, units)
            except Exception:
                self._compiled[output_name] = None  # the eager pass says what is wrong

        def cotangent(shape: tuple[int, ...]) -> np.ndarray:
            seed = np.zeros(shape)
            for k, unit in enumerate(units):
                seed[(k, *unit)] = 1.0
            return seed

        grad = self._vjp(spatial_shape, output_name, x, cotangent)
        maps: np.ndarray = np.abs(grad).sum(axis=-1)
        return maps

    def _program(self, spatial: tuple[int, ...], name: str) -> Compiled | None:
        """One compiled program per output, on a copy that takes every size (TensorFlow),
        for a few outputs at a time (each is a trace of the model).

        Made at the first probe: traced straight through the layers' ``call``
        (:mod:`rfest_keras._graph`), a trace costs about one eager pass through Keras'
        layers, and it gives the output shapes and the memory footprint as well
        (ResNet50: 1.7 s -> 0.8 s against eager probes until a trace paid for itself)."""
        with _lock, precision(self._dtype):
            if (
                keras.backend.backend() != "tensorflow"  # the others probe eagerly
                or self._is_live(spatial)
                or self._build_function is not None
                or len(self._outputs) > _MAX_PROGRAMS
            ):
                return None
            if name not in self._compiled and self._narrowed:
                self._compiled[name] = compiled(
                    self._narrowed_function(name), len(spatial), self._channels, self._dtype
                )
            if name not in self._compiled:
                self._copy_for(spatial)
                dynamic = self._dynamic
                if dynamic is None:
                    self._compiled[name] = None
                else:
                    self._compiled[name] = compiled(
                        self._counting_function(dynamic, spatial, name),
                        len(spatial),
                        self._channels,
                        self._dtype,
                    )
            return self._compiled[name]

    def _narrowed_function(self, name: str) -> Callable[[Any], tuple[Any, Any]]:
        """``x -> (output, elements of every layer output)``: the user's graph walked with
        one channel per layer (:mod:`rfest_keras._narrow`), for a trace."""
        model, feeds, dtype = self._model, self._feeds(self._model.inputs), self._dtype
        if self._layers_of.get(name, name) is None:
            return lambda x: run_narrowed(model, feeds(x), dtype)
        layers = layer_calls(model)
        base, index = kit.split_call(name, set(layers)) or (name, None)
        if len(layers.get(base, [])) != 1:
            raise OutputNotFoundError(
                f"{len(layers.get(base, []))} layers are named {base!r} (in nested models); "
                f"rename one of them to measure it"
            )
        target = layers[base][0]

        def captured(x: Any) -> tuple[Any, Any]:
            outputs: list[Any] = []
            _, elements = run_narrowed(model, feeds(x), dtype, record=(target, outputs))
            return nth_call(outputs, name, base, index), elements

        return captured

    def _narrowed_refused(
        self, spatial: tuple[int, ...], exc: Exception
    ) -> dict[str, tuple[int, ...]] | None:
        """The narrowed program failed: at the first size, the route did (the copy takes
        over, and Keras says what is wrong if it fails too); later, the model refuses the
        size (thin probes of a network that needs 75 pixels)."""
        if self._shapes:
            raise self._call_error((1, *spatial, self._channels), exc) from exc
        self._narrowed, self._narrowed_failed, self._route_chosen = False, True, False
        self._compiled.clear()
        return self._program_shapes(spatial)

    def _counting_function(
        self, built: Built, spatial: tuple[int, ...], name: str
    ) -> Callable[[Any], tuple[Any, Any]]:
        """``x -> (output, elements of every layer output)`` on the copy, for a trace:
        straight through the layers' ``call`` where :mod:`rfest_keras._graph` can."""
        constants = weight_values(built.model) if built.narrowed else []
        if built.graph and self._single_node(built.model, name):
            head = self._head(built, name)
            if direct_runnable(head, self._dtype):
                feeds = self._feeds(built.model.inputs)
                return lambda x: run_graph(head, feeds(x), constants)
        elif built.graph and direct_runnable(built.model, self._dtype):
            captured = self._captured(built, name, run=lambda m, x: run_graph(m, x, constants))
            return lambda x: captured(x)
        function = self._function(spatial, name)
        return lambda x: run_counting(built.model, lambda: function(x), dynamic=True)

    def _measure_footprint(self, spatial: tuple[int, ...], name: str) -> None:
        """Values kept per input pixel, counted once on a batch-1 forward pass."""
        if self._budget.per_pixel is not None or self._footprint_tried:
            return
        self._footprint_tried = True
        x = np.ones((1, *spatial, self._channels), self._dtype)
        with _lock, precision(self._dtype):
            try:
                live = self._is_live(spatial)
                model = self._model if live else self._copy_for(spatial).model
                function = self._function(spatial, name)
                elements = count_elements(model, lambda: function(keras.ops.convert_to_tensor(x)))
            except Exception:
                return  # the probe itself will say what is wrong
        self._budget.measured(elements, math.prod(spatial), self._channels)

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
        grad: np.ndarray = self._guarded(
            spatial, name, lambda f: vjp(f, x.astype(self._dtype), cotangent), x.shape
        )
        return grad

    def _run(self, spatial: tuple[int, ...], name: str, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return self._guarded(
                spatial, name, lambda f: f(keras.ops.convert_to_tensor(x)), x.shape
            )
        return self._guarded(spatial, name, lambda f: f(x), tuple(x.shape))

    def _guarded(
        self,
        spatial: tuple[int, ...],
        name: str,
        work: Callable[[Callable[[Any], Any]], Any],
        shape: tuple[Any, ...],
    ) -> Any:
        """``work(function)``; a size the live model refuses goes to a rebuilt copy."""
        with _lock, precision(self._dtype):
            live = self._is_live(spatial)
            try:
                result = work(self._function(spatial, name))
                self._copy_ran = self._copy_ran or not live
                return result
            except ModelCallError as exc:
                if not (live and is_graph_model(self._model)):
                    raise self._call_error(shape, exc) from exc
                self._live_refused.add(spatial)
                try:
                    return work(self._function(spatial, name))
                except Exception:
                    raise self._call_error(shape, exc) from exc
            except RFEstError:
                raise
            except Exception as exc:
                if live or not self._live_works(spatial, name, work):
                    raise self._call_error(shape, exc) from exc
                return self._live_result

    def _live_works(
        self, spatial: tuple[int, ...], name: str, work: Callable[[Callable[[Any], Any]], Any]
    ) -> bool:
        """The one-channel copy failed: if the model itself runs there, measure it from
        now on (the copy met something narrowing cannot follow); else keep the copy."""
        if self._dynamic is None or not self._dynamic.narrowed or self._build_function:
            return False
        if self._copy_ran or self._full_width_weights_bytes() > self._budget.limit / 2:
            # A copy that ran at another size fails here for the size (the estimator tries
            # thin sizes), which the model refuses too; finding out would cost every
            # weight again in float64 and a full-width pass (ConvNeXtLarge: 1.6 -> 4.4 GiB).
            return False
        dynamic, self._dynamic = self._dynamic, None
        self._live = LiveModel(self._model, dtype=self._dtype, linearize=self._linearize)
        try:
            self._live_result = work(self._function(spatial, name))
        except Exception:
            self._dynamic, self._live = dynamic, None
            return False
        _copy_refused[self._model] = True
        self._shapes.clear()
        return True

    def _full_width_weights_bytes(self) -> int:
        """What the live route's float substitutes of every weight take."""
        floats = [
            math.prod(int(d) for d in v.shape)
            for v in self._model.weights
            if keras.backend.standardize_dtype(v.dtype).startswith(("float", "bfloat"))
        ]
        return sum(floats) * self._budget.itemsize

    def _probe_input(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._linearize:
            return np.ones(shape)
        return 0.5 + np.random.default_rng(0).random(shape)

    def _is_live(self, spatial: tuple[int, ...]) -> bool:
        self._choose_route(len(spatial))
        return self._live is not None and spatial not in self._live_refused

    def _choose_route(self, axes: int) -> None:
        """Live unless a one-channel copy serves every size, or the model is ours to use."""
        if self._route_chosen:
            return
        self._route_chosen = True
        if self._build_function is not None:
            return
        if is_graph_model(self._model):
            if self._linearize and self._narrow and not _copy_refused.get(self._model, False):
                if (
                    keras.backend.backend() == "tensorflow"
                    and not self._narrowed_failed
                    and narrowable(self._model)
                ):
                    self._narrowed = True
                    return
                try:
                    self._dynamic = self._build(self._model, [None] * axes)
                except Exception:
                    self._dynamic = None
                if self._dynamic is not None and self._dynamic.narrowed:
                    self._dynamic_tried = True
                    return
                self._dynamic = None  # rebuilt only if the live model refuses a size
                _copy_refused[self._model] = True  # the float32 scout need not try again
            self._live = LiveModel(self._model, dtype=self._dtype, linearize=self._linearize)
        elif self._model.built:
            self._live = LiveModel(self._model, dtype=self._dtype, linearize=self._linearize)

    def _function(self, spatial: tuple[int, ...], name: str) -> Callable[[Any], Any]:
        if self._live is not None and spatial not in self._live_refused:
            function = self._live.function(self._layers_of.get(name, name))
            if not is_graph_model(self._model):
                return function
            feeds = self._feeds(self._model.inputs)
            return lambda x: function(feeds(x))
        built = self._copy_for(spatial)
        if built.graph and self._single_node(built.model, name):
            head = self._head(built, name)
            feeds = self._feeds(built.model.inputs)
            return lambda x: head(feeds(x), training=False)
        return self._captured(built, name)

    def _symbolic(self, spatial: tuple[int, ...]) -> bool:
        """Every requested output is a graph head of the copy (shapes without computing),
        and no layer declares a shape it does not have at inference."""
        with _lock, precision(self._dtype):
            built = self._copy_for(spatial)
        return (
            built.graph
            and all(self._single_node(built.model, n) for n in self._outputs)
            and not any(
                type(layer).__name__ in _SHAPES_NOT_AT_INFERENCE
                for layer in built.model._flatten_layers(include_self=False, recursive=True)
            )
        )

    def _single_node(self, model: keras.Model, name: str) -> bool:
        """The output is the model's, or a top-level layer called once."""
        if self._layers_of.get(name, name) is None:
            return True
        try:
            layer = model.get_layer(name)
        except ValueError:
            return False
        return len(layer._inbound_nodes) == 1 and not isinstance(layer, keras.Model)

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

    def _feeds(self, inputs: Sequence[Any]) -> Callable[[Any], Any]:
        if len(inputs) <= 1:
            return lambda x: x
        index = self._input_index
        declared = [tuple(tensor.shape[1:-1]) for tensor in self._model.inputs]

        def feed(x: Any) -> list[Any]:
            # sizes a compiled program leaves free are tensors there (keras.ops.shape)
            dims = tuple(x.shape) if isinstance(x, keras.KerasTensor) else keras.ops.shape(x)
            batch, spatial = dims[0], tuple(dims[1:-1])
            values: list[Any] = []
            for i, tensor in enumerate(inputs):
                if i == index:
                    values.append(x)
                    continue
                shape = list(tensor.shape[1:])
                if declared[i] == declared[index]:
                    # a twin of the measured input (siamese towers, image pairs) is probed
                    # at the same size, so that the branches still meet
                    shape = [*spatial, shape[-1]]
                elif None in shape:
                    if len(shape) != len(spatial) + 1 or shape[-1] is None:
                        raise InputShapeError(
                            f"input {i} of the model has free sizes {tuple(shape)} that rfest "
                            f"cannot choose; give it fixed sizes"
                        )
                    shape = [*spatial, shape[-1]]
                if isinstance(x, keras.KerasTensor):
                    values.append(keras.KerasTensor((batch, *shape), dtype=self._dtype))
                else:
                    # in the probe's dtype: JAX traces without x64 and would truncate
                    # (and warn about) a float64 constant
                    dtype = keras.backend.standardize_dtype(x.dtype)
                    values.append(keras.ops.ones((batch, *shape), dtype=dtype))
            return values

        return feed

    def _captured(
        self,
        built: Built,
        name: str,
        run: Callable[[keras.Model, Any], tuple[Any, Any]] | None = None,
    ) -> Callable[[Any], Any]:
        """The output of layer ``name`` (a call of it) when the copy runs; with ``run``
        (:func:`rfest_keras._graph.run_graph`), that output and ``run``'s count."""
        model = built.model
        if run is not None:
            feeds = self._feeds(model.inputs)
        if self._layers_of.get(name, name) is None:
            if run is not None:
                return lambda x: run(model, feeds(x))
            return lambda x: model(x, training=False)
        base, index = kit.split_call(name, {name, *self.layer_names()}) or (name, None)
        layer = _find_layer(model, base)
        captured: dict[str, list[Any]] = built.__dict__.setdefault("captured", {})
        if not getattr(layer, "_rfest_capturing", False):
            call = layer.call

            def capture(*args: Any, **kwargs: Any) -> Any:
                result = call(*args, **kwargs)
                captured.setdefault(layer.name, []).append(result)
                return result

            layer.call = capture
            layer._rfest_capturing = True

        def function(x: Any) -> Any:
            captured.clear()
            if run is not None:
                _, elements = run(model, feeds(x))
                return nth_call(captured.pop(layer.name, []), name, base, index), elements
            model(x, training=False)
            return nth_call(captured.pop(layer.name, []), name, base, index)

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

    def _known_outputs(self, output: object) -> Callable[[], list[str]]:
        """Layer names at any depth, and the calls of shared layers asked for by name."""

        def known() -> list[str]:
            layers = list(self.layer_names())
            wanted = [output] if isinstance(output, str) else output
            calls = [
                n
                for n in (wanted if isinstance(wanted, (list, tuple)) else [])
                if isinstance(n, str) and kit.split_call(n, set(layers)) is not None
            ]
            return layers + calls

        return known

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


def _refuse_keras_2(model: Any) -> None:
    """A tf_keras (Keras 2) model is not a Keras 3 one: say so instead of calling it."""
    kinds = type(model).__mro__ if not isinstance(model, type) else model.__mro__
    if not any(c.__module__.partition(".")[0] == "tf_keras" for c in kinds):
        return
    raise BackendError(
        f"this {type(model).__name__} is a tf_keras (Keras 2) model (TF_USE_LEGACY_KERAS=1 or "
        f"`import tf_keras`); rfest's keras backend runs Keras 3 models, whose variables and "
        f"layers it substitutes for one call without touching them. Load or build the model "
        f"with Keras 3 instead: save it (model.save('model.h5')) and load it with "
        f"keras.saving.load_model('model.h5') in a process without TF_USE_LEGACY_KERAS, or "
        f"pass a build function that builds it with `import keras` (Keras 3)"
    )


def _refuse_channels_first(model: keras.Model) -> None:
    """rfest reads a Keras model's input and outputs as ``(batch, *spatial, channels)``; a
    channels-first model would pair its channels with a spatial axis and lose one."""
    from rfest_keras._live import all_layers

    for layer in all_layers(model):
        if getattr(layer, "data_format", None) == "channels_first":
            raise InputShapeError(
                f"layer {layer.name!r} ({type(layer).__name__}) computes channels-first "
                f"(data_format='channels_first'); rfest's keras backend reads a model's "
                f"input and feature maps as (batch, *spatial, channels), as Keras does by "
                f"default, and would take the channel axis for a spatial one. Build the "
                f"model channels-last (keras.config.set_image_data_format('channels_last') "
                f"before building it, or data_format='channels_last' per layer): with "
                f"linearize=True (the default) the field does not depend on the weights, "
                f"and convolution kernels load unchanged if you want them"
            )


def _has_inputs(model: keras.Sequential) -> bool:
    try:
        return bool(model.inputs)
    except AttributeError:  # Keras: "Sequential model ... has no defined inputs yet"
        return False


def _sequential_at(model: keras.Sequential) -> Callable[[tuple[int | None, ...]], keras.Model]:
    """A build function: a copy of ``model`` (from its config) built for one input shape."""
    config = model.get_config()

    def build(shape: tuple[int | None, ...]) -> keras.Model:
        clone = keras.Sequential.from_config(config)
        clone.build((None, *shape))
        return clone

    return build


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
