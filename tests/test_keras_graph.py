"""rfest_keras._graph runs a functional graph as Keras' own call does (TensorFlow)."""

from __future__ import annotations

import math

import pytest

keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

from rfest_keras._graph import direct_runnable, run_graph, weight_values  # noqa: E402

pytestmark = [
    pytest.mark.keras,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="the compiled route is TensorFlow's"
    ),
]


def _net() -> keras.Model:
    """Branches joined by Add, a broadcast product, a nested Functional and Sequential,
    ``x + y`` and ``x + 1.0`` on Keras tensors, and layers whose call takes ``training``."""
    inner_in = keras.Input((10, 10, 4))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, padding="same")(inner_in), name="inner")
    stack = keras.Sequential([L.Conv2D(4, 1), L.BatchNormalization()], name="stack")
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(4, 3, name="stem")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Dropout(0.5, name="drop")(x)
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = inner(x)
    s = L.Add(name="sum")([a, b])
    gate = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(s)
    s = L.Multiply(name="excite")([s, gate])
    s = L.Add(name="broadcast_sum")([s, gate])
    y = stack(s) + a + 1.0
    y = L.Concatenate(name="join")([y, L.AveragePooling2D(1, name="pool")(x)])
    return keras.Model(inputs, L.MaxPooling2D(2, name="out")(y))


def _runner(model: keras.Model, constants: list[tuple[object, np.ndarray]]) -> object:
    return lambda t: run_graph(model, t, constants)


def _elements(model: keras.Model, batch: int) -> int:
    """Elements of every layer output at the model's fixed size, from Keras' shapes, but
    the Dropout's (at inference it passes its input through and keeps no new values) and
    those without a spatial extent (a pooled vector: a handful of values)."""
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.Model) or type(layer).__name__ in ("InputLayer", "Dropout"):
            continue
        if all(d == 1 for d in layer.output.shape[1:-1]):
            continue
        total += batch * math.prod(int(d) for d in layer.output.shape[1:])
    return total


def test_run_graph_computes_what_keras_computes() -> None:
    import tensorflow as tf

    model = _net()
    x = np.random.default_rng(0).random((2, 12, 12, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(model(x, training=False))
    assert direct_runnable(model, "float32")
    for constants in ([], weight_values(model)):
        got, elements = run_graph(model, tf.constant(x), constants)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-5)

        # traced with free spatial sizes, as the compiled program is
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        traced = tf.function(_runner(model, constants), input_signature=[spec], autograph=False)
        got, traced_elements = traced(tf.constant(x))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-5)
        assert float(elements) == float(traced_elements) == _elements(model, 2)


def test_layers_it_does_not_know_keep_keras_call() -> None:
    class Twice(L.Layer):
        def call(self, x: object) -> object:
            return keras.ops.multiply(x, 2.0)

    inputs = keras.Input((8, 8, 3))
    custom = keras.Model(inputs, Twice()(L.Conv2D(2, 3)(inputs)))
    assert not direct_runnable(custom, "float32")
    masked = keras.Sequential([keras.Input((5,)), L.Embedding(10, 4, mask_zero=True)])
    assert not direct_runnable(masked, "float32")
    assert direct_runnable(_net(), "float32")
    assert not direct_runnable(_net(), "float64")  # layers that compute in another dtype
