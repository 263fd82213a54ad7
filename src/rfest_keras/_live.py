"""Run the user's own Keras model, as it is, with its state substituted for one call.

No copy is made: for the duration of one forward pass

- every float variable reads a substitute value through a ``keras.StatelessScope``
  (positive constants when linearizing, the model's own values in the requested dtype
  otherwise), so the model's variables are never assigned;
- every layer computes in the requested dtype (its dtype policy is swapped), and
  Functional models take inputs of any float dtype and spatial size (their input cast
  and input-spec check are swapped);
- when linearizing, layers and graph operations are swapped for their linear
  counterparts (:mod:`rfest_keras._linearize`'s table), at whatever depth they sit:
  nested models, layers inside custom layers, layers called more than once;
- the layers whose outputs are asked for record every output they return.

Each swap is an instance attribute set with ``object.__setattr__`` and removed (or put
back) in ``finally``, so the model leaves exactly as it came: same variables, same
attributes. This works for subclassed models without ``get_config``, Lambda and custom
layers alike. Operations the table does not know (a ``max`` inside a custom ``call``)
run as written; with a positive input and positive weights only max-like selections
change the support, and the docs say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

from rfest import ModelCallError, OutputNotFoundError, RFEstError, kit
from rfest_keras._linearize import constant_value, linear_call, linear_merge, linear_operation

__all__ = ["LiveModel", "Patches", "all_layers", "layer_calls"]


class Patches:
    """Instance attributes set for a while and then put back exactly as they were."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, bool, Any]] = []

    def set(self, obj: object, attr: str, value: Any) -> None:
        own = vars(obj)
        self._undo.append((obj, attr, attr in own, own.get(attr)))
        object.__setattr__(obj, attr, value)

    def restore(self) -> None:
        while self._undo:
            obj, attr, had, old = self._undo.pop()
            if had:
                object.__setattr__(obj, attr, old)
            else:
                object.__delattr__(obj, attr)


def all_layers(model: keras.Model) -> list[Any]:
    """Every layer of the model at any depth, the model first, each once."""
    seen: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        seen.setdefault(id(layer), layer)
        inner = getattr(layer, "_functional", None)  # a Sequential's own graph
        if isinstance(inner, keras.Model):
            for sub in inner._flatten_layers(include_self=True, recursive=True):
                seen.setdefault(id(sub), sub)
    return list(seen.values())


def _is_functional(layer: Any) -> bool:
    return hasattr(layer, "_run_through_graph") and hasattr(layer, "_inputs_struct")


def layer_calls(model: keras.Model) -> dict[str, list[Any]]:
    """Layer name -> the distinct layers of that name, at any depth (input layers left out)."""
    names: dict[str, list[Any]] = {}
    for layer in all_layers(model)[1:]:
        if type(layer).__name__ != "InputLayer":
            names.setdefault(layer.name, []).append(layer)
    return names


class LiveModel:
    """The user's model, run with substituted variables and swapped layer behaviour.

    Example:
        >>> import keras, numpy as np
        >>> net = keras.Sequential([keras.Input((None, 1)), keras.layers.Conv1D(1, 3)])
        >>> live = LiveModel(net, dtype="float64", linearize=True)
        >>> y = live.function(None)(keras.ops.ones((1, 5, 1), dtype="float64"))
        >>> keras.ops.convert_to_numpy(y)[0, :, 0].tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, model: keras.Model, *, dtype: str, linearize: bool) -> None:
        self._model, self._dtype, self._linearize = model, dtype, linearize
        self._layers = all_layers(model)
        self._values: list[tuple[Any, Any]] | None = None
        self._names = layer_calls(model)

    def layer_names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def function(self, name: str | None) -> Callable[[Any], Any]:
        """``x -> output`` of layer ``name`` (``"name:k"``: its k-th call; None: the
        model's own output)."""
        if name is None:
            return lambda x: self._call(x, None)
        split = kit.split_call(name, set(self._names))
        if split is None:
            raise OutputNotFoundError(f"the model has no layer named {name!r}")
        base, index = split
        if len(self._names[base]) > 1:
            raise OutputNotFoundError(
                f"{len(self._names[base])} different layers are named {base!r} (in nested "
                f"models); rename one of them to measure it"
            )
        layer = self._names[base][0]
        return lambda x: self._call(x, (layer, name, base, index))

    def _call(self, x: Any, target: tuple[Any, str, str, int | None] | None) -> Any:
        calls: list[Any] = []
        with self._session(target[0] if target else None, calls):
            result = self._model(x, training=False)
        if target is None:
            return result
        _, name, base, index = target
        return nth_call(calls, name, base, index)

    @contextlib.contextmanager
    def _session(self, target: Any, calls: list[Any]) -> Iterator[None]:
        patches = Patches()
        failing: list[str] = []
        try:
            with model_errors(failing):
                self._swap(patches, target, calls, failing)
                scope = keras.StatelessScope()
                scope.state_mapping.update({id(v): value for v, value in self._substitutes()})
                with scope:
                    yield
        finally:
            patches.restore()

    def _swap(self, patches: Patches, target: Any, calls: list[Any], failing: list[str]) -> None:
        policy = keras.DTypePolicy(self._dtype)
        for layer in self._layers:
            patches.set(layer, "_called", layer._called)
            if not isinstance(layer._dtype_policy, keras.dtype_policies.DTypePolicyMap):
                patches.set(layer, "_dtype_policy", policy)
            if type(layer).__name__ == "InputLayer" and _is_float_name(layer._dtype):
                # A Sequential casts its input to its InputLayer's dtype: a float32 round
                # trip would round the gradient to float32 on its way back.
                patches.set(layer, "_dtype", self._dtype)
            if _is_functional(layer):
                patches.set(layer, "_convert_inputs_to_tensors", self._convert_inputs)
                patches.set(layer, "_assert_input_compatibility", _accept)
                if self._linearize:
                    for operation in layer._operations:
                        swapped = linear_operation(operation)
                        if swapped is not None:
                            patches.set(operation, "call", swapped)
            if layer is self._model:
                continue
            if self._linearize:
                call = linear_call(layer)
                if call is not None:
                    patches.set(layer, "call", call)
                merge = linear_merge(layer)
                if merge is not None:
                    patches.set(layer, "_merge_function", merge)
                if callable(getattr(layer, "activation", None)):
                    patches.set(layer, "activation", keras.activations.linear)
            patches.set(layer, "call", _watched(layer, layer.call, failing, calls, target))

    def _convert_inputs(self, flat_inputs: Sequence[Any]) -> list[Any]:
        dtype = self._dtype
        cast = keras.ops.cast
        return [x if x is None or not _is_float(x) else cast(x, dtype) for x in flat_inputs]

    def _substitutes(self) -> list[tuple[Any, Any]]:
        if self._values is None:
            values: dict[int, tuple[Any, Any]] = {}
            for layer in self._layers:
                transpose = type(layer).__name__.endswith("Transpose")
                for v in (*layer._trainable_variables, *layer._non_trainable_variables):
                    dtype = keras.backend.standardize_dtype(v.dtype)
                    if id(v) in values or not dtype.startswith(("float", "bfloat")):
                        continue
                    shape = tuple(int(s) for s in v.shape)
                    if self._linearize:
                        value = np.full(shape, constant_value(v.path, shape, transpose))
                        tensor = keras.ops.convert_to_tensor(value, dtype=self._dtype)
                    else:
                        tensor = keras.ops.cast(v.value, self._dtype)
                    values[id(v)] = (v, tensor)
            self._values = list(values.values())
        return self._values


@contextlib.contextmanager
def model_errors(entered: Sequence[str]) -> Iterator[None]:
    """An exception from the model's call as a ``ModelCallError`` naming the layer last
    entered (``entered`` fills as the call runs); rfest's own errors pass as they are."""
    try:
        yield
    except RFEstError:
        raise
    except Exception as exc:
        where = f" (in layer {entered[-1]!r})" if entered else ""
        raise ModelCallError(f"{type(exc).__name__}{where}: {exc}") from exc


def nth_call(calls: Sequence[Any], name: str, base: str, index: int | None) -> Any:
    """The output of call ``index`` (1-based; None: the only one) of layer ``base`` among
    ``calls``, the outputs it gave in one run of the model (``name``: as the user wrote it)."""
    if not calls:
        raise OutputNotFoundError(
            f"layer {base!r} did not run when the model was called; choose a layer on "
            f"the path from input to output"
        )
    kit.check_call(name, base, index, len(calls))
    return calls[(index or 1) - 1]


def _is_float(x: Any) -> bool:
    return bool(keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)))


def _is_float_name(dtype: Any) -> bool:
    return isinstance(dtype, str) and bool(keras.backend.is_float_dtype(dtype))


def _accept(*args: Any, **kwargs: Any) -> None:
    """Functional input specs fix the size the model was built at; rfest chooses sizes."""


def _watched(
    layer: Any, call: Callable[..., Any], failing: list[str], calls: list[Any], target: Any
) -> Callable[..., Any]:
    record = layer is target

    def watched(*args: Any, **kwargs: Any) -> Any:
        failing.append(layer.name)
        result = call(*args, **kwargs)
        failing.pop()
        if record:
            calls.append(result)
        return result

    return watched
