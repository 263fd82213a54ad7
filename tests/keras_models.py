"""Reference Keras networks for the tests, each with its field worked by hand.

Per axis, from r = 1, j = 1, first = 0 (first input index unit 0 sees):
``first -= p_before * j``; ``r += (k - 1) * d * j``; ``j *= s``; padding = -first.
TensorFlow 'same' with stride s on size n: out = ceil(n / s),
pad_total = max((out - 1) * s + k - n, 0), pad_before = pad_total // 2.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers as L


def receptivefield_readme_net(input_shape: Any = (96, 96, 3)) -> keras.Model:
    """The ``receptivefield`` README network (also its build-function form).

    conv5 r5; conv3 r7; pool2 r8 j2; conv3 r12; conv3 r16; pool2 r18 j4; conv3 r26;
    conv3 r34: size 34, stride 4, padding 0, offset 16.5.
    """
    x = inputs = keras.Input(tuple(input_shape))
    x = L.Conv2D(32, 5, activation="relu")(x)
    x = L.Conv2D(32, 3, activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(64, 3, activation="relu")(x)
    x = L.Conv2D(64, 3, activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(128, 3, activation="relu")(x)
    x = L.Conv2D(128, 3, name="feature_grid")(x)
    return keras.Model(inputs, x)


@keras.saving.register_keras_serializable("rfest_tests")
class SmallNet(keras.Model):
    """Subclassed: conv3 r3; max pool 2 r4 j2; conv3 r8 (all valid): 8 / 2 / 0."""

    def __init__(self, width: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.conv1 = L.Conv2D(width, 3, activation="relu", name="conv1")
        self.pool = L.MaxPooling2D(2, name="pool")
        self.norm = L.BatchNormalization(name="norm")
        self.conv2 = L.Conv2D(width, 3, name="conv2")

    def call(self, x: Any, training: bool = False) -> Any:
        return self.conv2(self.norm(self.pool(self.conv1(x)), training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "width": self.width}


class FixedSizeNet(keras.Model):
    """Subclassed, with a dense head whose kernel depends on the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = L.Conv2D(2, 3, name="conv")
        self.flatten = L.Flatten()
        self.dense = L.Dense(3, name="dense")

    def call(self, x: Any) -> Any:
        return self.dense(self.flatten(self.conv(x)))


class NoConfigNet(keras.Model):
    """Subclassed, no get_config (the usual case): conv3 r3; max pool 2 r4 j2; conv3 r8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = L.Conv2D(4, 3, activation="relu", name="conv1")
        self.pool = L.MaxPooling2D(2, name="pool")
        self.norm = L.LayerNormalization(name="norm")
        self.conv2 = L.Conv2D(4, 3, name="conv2")

    def call(self, x: Any) -> Any:
        return self.conv2(self.norm(self.pool(self.conv1(x))))


class GatedBlock(L.Layer):
    """Custom layer: k3 'same' conv (pad 1), a sigmoid gate from a 1x1 conv of it, then
    2x2/2 average pooling by a raw op: r3 first-1; r4 j2 first-1."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 3, padding="same", activation="relu")
        self.gate = L.Conv2D(4, 1, activation="sigmoid")

    def call(self, x: Any) -> Any:
        y = self.conv(x)
        return keras.ops.average_pool(y * self.gate(y), 2, 2, "valid")


def custom_layer_net() -> keras.Model:
    """GatedBlock then k3 valid: r4 + 2 * 2 = 8, stride 2, padding 1 (unregistered layer)."""
    x = inputs = keras.Input((None, None, 3))
    x = GatedBlock(name="block")(x)
    return keras.Model(inputs, L.Conv2D(2, 3, name="head")(x))


def shared_layer_net() -> keras.Model:
    """One k3 valid conv applied twice (shared:1 r3, shared:2 r5), then a 1x1 head: r5."""
    x = inputs = keras.Input((None, None, 3))
    shared = L.Conv2D(3, 3, activation="relu", name="shared")
    return keras.Model(inputs, L.Conv2D(2, 1, name="head")(shared(shared(x))))


def shared_block_net() -> keras.Model:
    """A nested Sequential block (k3 'same' conv, relu) called twice in a row: r5, padding
    2. Its first call sees the model's 8 input channels, its second the block's own."""
    block = keras.Sequential([L.Conv2D(8, 3, padding="same"), L.ReLU()], name="block")
    inputs = keras.Input((None, None, 8))
    return keras.Model(inputs, block(block(inputs)))


def lambda_net() -> keras.Model:
    """k3 valid, a Lambda (relu, doubled), k3 valid: r5, padding 0."""
    x = inputs = keras.Input((None, None, 3))
    x = L.Conv2D(3, 3)(x)
    x = L.Lambda(lambda t: keras.ops.relu(t) * 2.0, name="lam")(x)
    return keras.Model(inputs, L.Conv2D(2, 3, name="head")(x))


def state(model: keras.Model) -> list[tuple[str, dict[str, Any]]]:
    """Every layer's instance attributes (by identity) and variables (by value)."""
    from rfest_keras._autodiff import to_numpy

    layers = model._flatten_layers(include_self=True, recursive=True)
    out: list[tuple[str, dict[str, Any]]] = [(layer.name, dict(vars(layer))) for layer in layers]
    values = {v.path: (to_numpy(v), v.trainable, str(v.dtype)) for v in model.weights}
    out.append(("variables", values))
    return out


def assert_untouched(before: list[tuple[str, dict[str, Any]]], model: keras.Model) -> None:
    import numpy as np

    after = state(model)
    assert [n for n, _ in after] == [n for n, _ in before]
    for (name, old), (_, new) in zip(before[:-1], after[:-1], strict=True):
        assert old.keys() == new.keys(), (name, set(old) ^ set(new))
        changed = [k for k in old if old[k] is not new[k] and k != "_rfest_unused"]
        assert not changed, (name, changed)
    old_values, new_values = before[-1][1], after[-1][1]
    assert old_values.keys() == new_values.keys()
    for path, (value, trainable, dtype) in old_values.items():
        v2, t2, d2 = new_values[path]
        assert np.array_equal(value, v2) and trainable == t2 and dtype == d2, path
