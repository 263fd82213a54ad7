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
