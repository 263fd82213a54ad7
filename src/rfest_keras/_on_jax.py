"""Keras on JAX: the user's model as a pure JAX function, measured by ``rfest_jax``.

On the JAX Keras backend every Keras op is a JAX op, so the model called inside a
``keras.StatelessScope`` (its variables read from arguments, as ``stateless_call`` does)
is a pure function ``run(params, x)``. It is handed to the JAX backend's machinery
(:class:`rfest_jax._provider.JaxGradientProvider`): traced once per input shape, linearized
and narrowed per jaxpr equation (:mod:`rfest_jax._interpret`: every op is seen, custom
layers, ``Lambda`` and raw ``keras.ops`` included), compiled once per program and shared
between providers of the same model (:mod:`rfest_jax._shared`). Eager Keras-on-JAX
compiles every op at every probe size; this runs one compiled, one-channel program.

Names stay Keras names: each call of every layer at any depth is recorded during the
trace under ``"<layer>:<k>"`` (the model's own output under the JAX backend's model key),
and ``output=`` names are mapped onto them with the kit's call rules. For the duration of
a trace each layer's ``call`` records its outputs and each Functional model accepts any
input size (a nested Application's fixed input is only a check); every swap is undone in
``finally``, so the model leaves as it came. A graph of built-in layers is walked, each
layer's ``call`` called without Keras' ``__call__`` (:func:`_walked`). A size the model
itself refuses (a ``Flatten`` + ``Dense`` head) is measured by the Keras route, which
rebuilds copies.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from rfest import ModelCallError, OutputNotFoundError, kit
from rfest_jax._models import MODEL_KEY, MODEL_OUTPUT, Model
from rfest_jax._provider import JaxGradientProvider
from rfest_keras._graph import direct_runnable, graph_of
from rfest_keras._linearize import constant_value, linear_call
from rfest_keras._live import (
    Patches,
    _accept,
    _is_functional,
    all_layers,
    layer_calls,
    model_errors,
)
from rfest_keras._memory import Budget
from rfest_keras._rebuild import is_graph_model

if TYPE_CHECKING:
    from rfest_keras._provider import KerasGradientProvider

__all__ = ["KerasOnJax"]

# Per model and input shape: the values a batch-1 pass keeps (counted while tracing).
_footprints: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], int]] = (
    weakref.WeakKeyDictionary()
)


class KerasOnJax:
    """The Keras provider's contract, measured through a jaxpr of the user's model.

    ``keras`` is the :class:`~rfest_keras._provider.KerasGradientProvider` that checked
    the options, the input shape and the output names; sizes the model refuses go to it.
    """

    def __init__(self, keras_provider: KerasGradientProvider) -> None:
        self._keras = keras_provider
        self._inner: JaxGradientProvider | None = None
        self._keys: dict[str, str] = {}
        self._refused: set[tuple[int, ...]] = set()
        self._model: keras.Model = keras_provider._model
        self._narrowing = keras_provider._linearize and keras_provider._narrow

    # -- the GradientProvider protocol, in Keras terms -------------------------------

    @property
    def spatial_shape(self) -> tuple[int | None, ...]:
        return self._keras.spatial_shape

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._keras.output_names

    @property
    def float32_scout(self) -> bool:
        """Narrowed, a float64 program costs what a float32 one does."""
        return not self._narrowing

    @property
    def thin_probes(self) -> bool:
        """Narrowed, a probe costs its compilation, not its size."""
        return not self._narrowing

    @property
    def _budget(self) -> Budget:
        return self._keras._budget

    def layer_names(self) -> tuple[str, ...]:
        return self._keras.layer_names()

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        spatial = tuple(int(s) for s in spatial_shape)
        inner = self._running_at(spatial)
        if inner is None:
            return self._keras.output_shapes(spatial)
        shapes = inner.output_shapes(spatial)
        return {name: shapes[self._keys[name]] for name in self.output_names}

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        spatial = tuple(int(s) for s in spatial_shape)
        inner = self._running_at(spatial)
        if inner is None:
            return self._keras.gradient_maps(spatial, output_name, units)
        key = self._keys[output_name]
        self._measure_footprint(spatial)
        return self._budget.in_batches(
            spatial, units, lambda batch: inner.gradient_maps(spatial, key, batch)
        )

    def border_free(self, spatial_shape: tuple[int, ...], output_name: str) -> bool:
        """The JAX program's proof that no unit's field meets a border at this size (see
        :mod:`rfest_jax._borders`): the estimator then skips its check at a second size,
        a probe 1024 long (a TimeDistributed model unrolls that many steps)."""
        spatial = tuple(int(s) for s in spatial_shape)
        inner = self._running_at(spatial)
        return inner is not None and inner.border_free(spatial, self._keys[output_name])

    def input_gradients(
        self, inputs: np.ndarray, output_name: str, unit: tuple[int, ...]
    ) -> np.ndarray:
        x = np.asarray(inputs)
        spatial = tuple(int(s) for s in x.shape[1:-1])
        ours = x.ndim == len(self.spatial_shape) + 2 and x.shape[-1] == self._keras._channels
        inner = self._running_at(spatial) if ours else None
        if inner is None:
            return self._keras.input_gradients(inputs, output_name, unit)
        return inner.input_gradients(x, self._keys[output_name], unit)

    # -- the JAX program ----------------------------------------------------------

    def _running_at(self, spatial: tuple[int, ...]) -> JaxGradientProvider | None:
        """The JAX provider, traced at this size; None where the model refuses the size
        (the Keras routes measure it then, see :meth:`_refuse`)."""
        inner = self._inner_at(spatial)
        if inner is None:
            return None
        try:
            inner.output_shapes(spatial)  # traces: a size the model refuses raises here
        except ModelCallError as exc:
            self._refuse(spatial, exc)
            return None
        return inner

    def _inner_at(self, spatial: tuple[int, ...]) -> JaxGradientProvider | None:
        """The JAX provider (made at the first size the model takes), None where refused."""
        if spatial in self._refused:
            return None
        if self._inner is None:
            keras_ = self._keras
            options: dict[str, Any] = {
                "input_shape": (*spatial, keras_._channels),
                "dtype": keras_._dtype,
                "linearize": keras_._linearize,
                "narrow": keras_._narrow,
            }
            model = self._jax_model()
            try:  # traces at this size (the trace is shared with the provider below)
                traced = JaxGradientProvider(model, **options).layer_names()
            except ModelCallError as exc:
                self._refuse(spatial, exc)
                return None
            keys = {name: self._checked_key(name, traced) for name in self.output_names}
            wanted = [k for k in keys.values() if k != MODEL_KEY]
            self._inner = JaxGradientProvider(model, output=wanted or None, **options)
            self._keys = {n: MODEL_OUTPUT if k == MODEL_KEY else k for n, k in keys.items()}
        return self._inner

    def _refuse(self, spatial: tuple[int, ...], exc: ModelCallError) -> None:
        """The model does not run at this size. The Keras route can do better only where
        it rebuilds the model: a linearized copy (constant weights fit any size) or a
        build function's model; otherwise it would fail alike, after building a copy."""
        keras_ = self._keras
        if not (keras_._linearize or keras_._build_function is not None):
            shape = (1, *spatial, keras_._channels)
            raise keras_._call_error(shape, exc) from exc
        self._refused.add(spatial)

    def _checked_key(self, name: str, traced: Sequence[str]) -> str:
        """The traced program's name of output ``name``: Keras' errors where it has none."""
        layer = self._keras._layers_of.get(name, name)
        if layer is None:
            outputs = getattr(self._model, "outputs", None) if _is_graph(self._model) else None
            if outputs is not None and len(outputs) != 1:
                raise OutputNotFoundError(
                    f"the model has {len(outputs)} outputs; name the layer whose output you "
                    f"want with output='...'"
                )
            return MODEL_KEY
        names = layer_calls(self._model)
        split = kit.split_call(layer, set(names))
        if split is None:
            raise OutputNotFoundError(f"the model has no layer named {layer!r}")
        base, index = split
        if len(names[base]) > 1:
            raise OutputNotFoundError(
                f"{len(names[base])} different layers are named {base!r} (in nested "
                f"models); rename one of them to measure it"
            )
        count = sum(1 for t in traced if t.rpartition(":")[0] == base)
        if count == 0:
            raise OutputNotFoundError(
                f"layer {base!r} did not run when the model was called (or returned no "
                f"single array); choose a layer on the path from input to output"
            )
        kit.check_call(layer, base, index, count)
        return f"{base}:{index or 1}"

    def _measure_footprint(self, spatial: tuple[int, ...]) -> None:
        budget = self._budget
        if budget.per_pixel is not None:
            return
        counted = _footprints.get(self._model, {}).get((spatial, self._narrowing))
        if counted is not None:
            budget.measured(counted, math.prod(spatial), self._keras._channels)

    def _jax_model(self) -> Model:
        """``run(params, x) -> {key: value}`` of every layer call, params = float variables."""
        model = self._model
        layers = all_layers(model)
        variables: dict[int, tuple[Any, np.ndarray]] = {}
        for layer in layers:
            transpose = type(layer).__name__.endswith("Transpose")
            for v in (*layer._trainable_variables, *layer._non_trainable_variables):
                dtype = keras.backend.standardize_dtype(v.dtype)
                if dtype.startswith(("float", "bfloat")) and id(v) not in variables:
                    shape = tuple(int(s) for s in v.shape)
                    variables[id(v)] = (v, np.full(shape, constant_value(v.path, shape, transpose)))
        held = [v for v, _ in variables.values()]
        params = [v.value for v in held]
        linearized = [value for _, value in variables.values()]
        feeds = self._keras._feeds(model.inputs) if _is_graph(model) else (lambda x: x)
        narrowing, linearizing = self._narrowing, self._keras._linearize
        ref = weakref.ref(model)

        def run(values: Sequence[Any], x: Any) -> dict[str, Any]:
            owner = ref()
            assert owner is not None
            calls: dict[int, tuple[Any, list[Any]]] = {}
            running: list[str] = []
            patches = Patches()
            try:
                with model_errors(running):
                    for layer in layers:
                        patches.set(layer, "_called", layer._called)
                        if _is_functional(layer):
                            patches.set(layer, "_assert_input_compatibility", _accept)
                        if layer is not owner:
                            swap = linearizing and _by_table(layer)
                            call = linear_call(layer) if swap else layer.call
                            recorded = _recording(layer, call, calls, running)
                            patches.set(layer, "call", recorded)
                    scope = keras.StatelessScope(state_mapping=list(zip(held, values, strict=True)))
                    with scope:
                        if direct_runnable(owner, keras.backend.standardize_dtype(x.dtype)):
                            out = _walked(owner, feeds(x), calls, running)
                        else:
                            out = owner(feeds(x), training=False)
            finally:
                patches.restore()
            named: dict[str, Any] = {MODEL_KEY: out}
            kept = 0
            for layer, results in calls.values():
                for k, value in enumerate(results, start=1):
                    if _is_array(value):
                        named.setdefault(f"{layer.name}:{k}", value)
                        shape = tuple(int(s) for s in value.shape)
                        kept += math.prod(shape[:-1] if narrowing else shape)
            if int(x.shape[0]) == 1:  # probes run one sample forward
                spatial = tuple(int(s) for s in x.shape[1:-1])
                _footprints.setdefault(owner, {})[(spatial, narrowing)] = kept
            return named

        structure = ("keras", len(layers), narrowing, linearizing, self._keras._input_index)
        return Model("keras", params, linearized, run, owner=model, structure=structure)


def _by_table(layer: Any) -> bool:
    """Layers the jaxpr reading would get wrong, linearized by the copy's table instead
    (``linear_call``), as on the other backends:

    - ``GroupNormalization`` centres as ``x * inv + (-mean * inv)``: an added statistic,
      which the jaxpr reading keeps (only ``x - mean`` is read as centring, an added mean
      may be a real global term), so the field would come out global; it is the identity;
    - ``Softmax`` over several axes is ``exp(x - logsumexp(x))``, whose subtracted
      statistic reads as centring, so a softmax over the image would come out local; it
      acts on every input along its axes."""
    return type(layer).__name__ in ("GroupNormalization", "Softmax") and type(
        layer
    ).__module__.startswith("keras.")


def _walked(
    model: keras.Model,
    inputs: Any,
    calls: dict[int, tuple[Any, list[Any]]],
    running: list[str],
) -> Any:
    """``model(inputs, training=False)`` for a :func:`~rfest_keras._graph.direct_runnable`
    model, its graph walked with each layer's ``call`` (patched to record) instead of
    ``__call__``: Keras' per-call bookkeeping was about a third of a trace, paid at every
    probe size (NASNetMobile: 1.4-1.8 s to 0.9-1.1 s a size, medians of six sizes in three
    paired runs). A nested model is walked too, recorded as its ``call`` would be, and its
    declared input size is not checked."""

    def operation_fn(operation: Any) -> Callable[..., Any]:
        graph = graph_of(operation)
        if graph is not None:

            def nested(*args: Any, **kwargs: Any) -> Any:
                running.append(operation.name)
                inner = args[0] if args else kwargs["inputs"]
                result = graph._run_through_graph(
                    keras.tree.flatten(inner), operation_fn=operation_fn
                )
                running.pop()
                calls.setdefault(id(operation), (operation, []))[1].append(result)
                return result

            return nested
        call: Callable[..., Any] = operation.call
        if not getattr(operation, "_call_has_training_arg", False):
            return call

        def inference(*args: Any, **kwargs: Any) -> Any:
            kwargs["training"] = False
            return call(*args, **kwargs)

        return inference

    graph = graph_of(model)
    assert graph is not None
    return graph._run_through_graph(keras.tree.flatten(inputs), operation_fn=operation_fn)


def _recording(
    layer: Any,
    call: Callable[..., Any],
    calls: dict[int, tuple[Any, list[Any]]],
    running: list[str],
) -> Callable[..., Any]:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        running.append(layer.name)
        result = call(*args, **kwargs)
        running.pop()
        calls.setdefault(id(layer), (layer, []))[1].append(result)
        return result

    return recorded


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _is_graph(model: Any) -> bool:
    return bool(is_graph_model(model))
