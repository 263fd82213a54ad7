"""Run a model copy's functional graph with each layer's ``call`` directly.

A trace of the copy inside a compiled program (:func:`rfest_keras._autodiff.compiled`)
spends most of its time in Keras' ``Layer.__call__``, not in the operations: input
conversion, call-context and mask bookkeeping and a name scope per layer (ResNet50:
about half a trace; DenseNet, NASNet: more). The copy is rfest's own, built, in one
float dtype, with inference behaviour asked for everywhere, so none of that changes what
a layer computes: :func:`run_graph` walks the graph's nodes in Keras' own order
(``_run_through_graph``) and calls ``layer.call`` with ``training=False`` where the
layer takes it. Only for copies made of Keras' built-in layers and graph operations
(:func:`direct_runnable`); one with a layer it does not know (custom, masking, another
dtype) is traced through ``__call__`` as before. It also counts the elements of every
layer output that is not one of its inputs passed through, for the memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from rfest_keras._autodiff import to_numpy
from rfest_keras._tally import Tally, same_spatial_input

__all__ = ["direct_runnable", "graph_of", "run_graph", "summed", "weight_values"]

_BUILT_IN = ("keras.src.layers.", "keras.src.ops.", "keras.src.applications.")
_MASKING = frozenset({"Masking", "Embedding"})  # their consumers need the masks


def direct_runnable(model: keras.Model, dtype: str) -> bool:
    """Whether :func:`run_graph` runs every operation of ``model`` directly: a Functional
    graph (a Sequential's own included) whose operations, at any depth, are built-in
    layers and graph operations computing in ``dtype``, or such graphs."""
    graph = graph_of(model)
    if graph is None:
        return False
    for operation in graph.operations:
        if type(operation).__name__ == "InputLayer":
            continue
        inner = graph_of(operation)
        if inner is not None:
            if not direct_runnable(inner, dtype):
                return False
        elif not _direct(operation, dtype):
            return False
    return True


def run_graph(
    model: keras.Model,
    inputs: Any,
    constants: Sequence[tuple[Any, np.ndarray]] = (),
    calls: Callable[[Any], Callable[..., Any]] | None = None,
    record: tuple[Any, list[Any]] | None = None,
    tally: Tally | None = None,
) -> tuple[Any, Any]:
    """``model(inputs, training=False)`` and the elements of every layer output on the
    way but inputs passed through (a float64 tensor), calling each layer's ``call``
    directly. Only for models :func:`direct_runnable` accepts (with ``calls``: those
    :func:`rfest_keras._narrow.narrowable` accepts).

    ``constants`` (variable, value) pairs (:func:`weight_values`) enter a trace as
    constants instead of variable reads: each read of a variable in a ``tf.function``
    captures its handle, about as much tracing as the layer's own operations
    (NASNetMobile: 356 reads, a fifth of its trace). For small weights only (a narrowed
    copy's). ``calls(operation)``, when given, runs in place of each operation's ``call``
    (:func:`rfest_keras._narrow.narrowed_call` on the user's own model). ``record``
    ``(operation, outputs)`` collects the output of each call of that operation (a layer
    or a nested model). ``tally`` counts the elements (a new one if not given)."""

    tally = tally if tally is not None else Tally()

    def runner(operation: Any) -> Callable[..., Any]:
        run = direct(operation)
        if record is None or operation is not record[0]:
            return run

        def recorded(*args: Any, **kwargs: Any) -> Any:
            record[1].append(run(*args, **kwargs))
            return record[1][-1]

        return recorded

    def direct(operation: Any) -> Callable[..., Any]:
        graph = graph_of(operation)
        if graph is not None:
            return lambda *args, **kwargs: walk(graph, args[0] if args else kwargs["inputs"])
        call: Callable[..., Any] = (
            calls(operation) if calls is not None else summed(operation) or operation.call
        )
        if not isinstance(operation, keras.layers.Layer):
            return call  # a graph operation (``x + y``): not counted, as before
        training = bool(getattr(operation, "_call_has_training_arg", False))

        def layer_call(*args: Any, **kwargs: Any) -> Any:
            if training:
                kwargs["training"] = False
            result = call(*args, **kwargs)
            # an input passed through (a linearized activation or normalization) keeps
            # no new values
            passed = {id(t) for t in keras.tree.flatten((args, kwargs))}
            like = same_spatial_input(operation, args, kwargs)
            for t in keras.tree.flatten(result):
                if getattr(t, "shape", None) is not None and id(t) not in passed:
                    tally.count(t, like)
            return result

        return layer_call

    def walk(graph: Any, values: Any) -> Any:
        flat: Sequence[Any] = keras.tree.flatten(values)
        return graph._run_through_graph(list(flat), operation_fn=runner)

    graph = graph_of(model)
    assert graph is not None
    if constants:
        with keras.StatelessScope(state_mapping=list(constants)):
            result = walk(graph, inputs)
    else:
        result = walk(graph, inputs)
    return result, tally.total()


def weight_values(model: keras.Model) -> list[tuple[Any, np.ndarray]]:
    """Every weight of ``model`` with its value now (read eagerly, outside a trace)."""
    return [(v, to_numpy(v)) for v in model.weights]


def summed(operation: Any) -> Callable[..., Any] | None:
    """An ``Add`` layer or ``x + y`` as one ``AddN`` where its inputs' shapes agree.

    ``tf.add`` may broadcast, so its gradient reduces each input's gradient to that
    input's shape: five to eight shape operations per sum in a trace whose spatial sizes
    are free (NASNetMobile's 80 sums: a third of its gradient's trace). Inputs of one
    static shape (free sizes in the same places) make ``AddN``, whose gradient passes
    through; shapes that differ at run time then raise instead of broadcasting, and the
    caller falls back to Keras' pass."""
    kind = type(operation)
    if kind.__name__ != "Add" or not kind.__module__.startswith(
        ("keras.src.layers.merging.", "keras.src.ops.numpy")
    ):
        return None
    layer = isinstance(operation, keras.layers.Layer)
    original: Callable[..., Any] = operation.call

    def call(*args: Any, **kwargs: Any) -> Any:
        import tensorflow as tf

        tensors = list(args[0]) if layer and len(args) == 1 else list(args)
        if (
            kwargs
            or len(tensors) < 2
            or not all(isinstance(t, tf.Tensor) for t in tensors)  # ``x + 3.0``
            or len({(tuple(t.shape), t.dtype) for t in tensors}) != 1
        ):
            return original(*args, **kwargs)
        return tf.add_n(tensors)

    return call


def graph_of(model: Any) -> Any:
    """The Functional graph that runs ``model`` (itself, or a built Sequential's own)."""
    if type(model).__name__ == "Sequential":
        model = getattr(model, "_functional", None)
    if (
        model is not None
        and type(model).__name__ == "Functional"
        and type(model).__module__.startswith("keras.")
    ):
        return model
    return None


def _direct(operation: Any, dtype: str) -> bool:
    """A built-in layer or operation, built, computing in ``dtype``: safe to call its
    ``call`` without ``__call__``."""
    if not type(operation).__module__.startswith(_BUILT_IN):
        return False
    if isinstance(operation, keras.layers.Layer):
        if not operation.built or type(operation).__name__ in _MASKING:
            return False
        if getattr(operation, "compute_dtype", dtype) != dtype:
            return False
        if list(operation._flatten_layers(include_self=False, recursive=False)):
            return False  # wrappers run their sublayers through __call__: keep theirs
    return True
