"""Which Keras models the backend proves to treat their spatial axes alike
(rfest_keras._alike), and that measuring one axis for both gives the right field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

from keras_recurrence import field_of  # noqa: E402
from rfest._estimate import estimate  # noqa: E402
from rfest_keras import KerasGradientProvider  # noqa: E402
from rfest_keras._alike import axes_alike  # noqa: E402

pytestmark = pytest.mark.keras


def _model(body: Callable[[Any], Any], shape: tuple[int, ...] = (None, None, 3)) -> Any:
    inputs = keras.Input(shape)
    return keras.Model(inputs, body(inputs))


def _squeeze_excite(x: Any) -> Any:
    x = L.Conv2D(8, 3, strides=2, padding="same")(x)
    gate = L.GlobalAveragePooling2D()(x)
    gate = L.Reshape((1, 1, 8))(L.Dense(8, activation="sigmoid")(gate))
    return L.Multiply()([x, gate])


def _nasnet_like(x: Any) -> Any:
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(L.ReLU()(x))
    a = L.SeparableConv2D(4, 5, strides=2)(x)
    b = L.MaxPooling2D(3, strides=2)(x)
    b = L.Conv2D(4, 1)(L.Cropping2D(((1, 1), (1, 1)))(L.ZeroPadding2D(1)(b)))
    return L.Concatenate()([a, b])


def _nested(asymmetric: bool) -> Callable[[Any], Any]:
    def body(x: Any) -> Any:
        inner = keras.Sequential(
            [L.Conv2D(4, (3, 1) if asymmetric else 3), L.BatchNormalization(), L.ReLU()]
        )
        return L.UpSampling2D(2)(inner(L.Rescaling(1 / 255)(x)))

    return body


ALIKE: dict[str, Callable[[Any], Any]] = {
    "squeeze-excite": _squeeze_excite,
    "NASNet-like padding, cropping, pooling, concatenation": _nasnet_like,
    "a nested model": _nested(asymmetric=False),
    "scalar operations": lambda x: (L.Conv2D(4, 3, dilation_rate=2)(x) * 2.0 + 1.0) / 3.0,
    "same padding, strided": lambda x: L.AveragePooling2D(2)(L.Conv2D(4, 4, 2, "same")(x)),
    "transposed, output padding": lambda x: L.Conv2DTranspose(4, 3, 2, output_padding=1)(x),
    "depthwise, global pooling": lambda x: L.GlobalMaxPooling2D(keepdims=True)(
        L.DepthwiseConv2D(3)(x)
    ),
}


def _factorized(x: Any) -> Any:
    """Inception's 7x7 as a 1x7 then a 7x1 window, beside a branch of its own."""
    seven = L.Conv2D(4, (7, 1), padding="same")(L.ReLU()(L.Conv2D(4, (1, 7), padding="same")(x)))
    return L.Conv2D(4, 3, strides=2)(L.Concatenate()([seven, L.Conv2D(4, 1)(x)]))


def _cross(x: Any) -> Any:
    """InceptionV3's last blocks: a 1x3 and a 3x1 window of one tensor, concatenated."""
    x = L.Conv2D(4, 3, strides=2)(x)
    cross = [L.Conv2D(2, (1, 3), padding="same")(x), L.Conv2D(2, (3, 1), padding="same")(x)]
    return L.AveragePooling2D(2)(L.Concatenate()(cross))


BY_WINDOWS: dict[str, Callable[[Any], Any]] = {
    "a 1x7 then a 7x1 window": _factorized,
    "a 1x3 and a 3x1 window concatenated": _cross,
}

ALIKE.update(BY_WINDOWS)

NOT_ALIKE: dict[str, Callable[[Any], Any]] = {
    "a 1x7 kernel": lambda x: L.Conv2D(4, (1, 7))(x),
    "a 'same' 1x7 kernel": lambda x: L.Conv2D(4, (1, 7), padding="same")(x),
    "a 1x7 read by a strided window before the 7x1": lambda x: L.Conv2D(4, (7, 1), padding="same")(
        L.Conv2D(4, 3, strides=2)(L.Conv2D(4, (1, 7), padding="same")(x))
    ),
    "a 1x5 and a 5x3 window added": lambda x: L.Add()(
        [L.Conv2D(4, (1, 5), padding="same")(x), L.Conv2D(4, (5, 3), padding="same")(x)]
    ),
    "strides (1, 2)": lambda x: L.Conv2D(4, 3, strides=(1, 2))(x),
    "dilation (1, 2)": lambda x: L.Conv2D(4, 3, dilation_rate=(1, 2))(x),
    "pool (2, 1)": lambda x: L.MaxPooling2D((2, 1))(x),
    "padding rows only": lambda x: L.ZeroPadding2D(((1, 1), (0, 0)))(x),
    "cropping one side of one axis": lambda x: L.Cropping2D(((1, 0), (0, 0)))(x),
    "upsampling (2, 1)": lambda x: L.UpSampling2D((2, 1))(x),
    "a concatenation along rows": lambda x: L.Concatenate(axis=1)([x, L.Conv2D(3, 3)(x)]),
    "a nested model with a 3x1 kernel": _nested(asymmetric=True),
    "a transposed convolution with output padding (1, 0)": lambda x: L.Conv2DTranspose(
        4, 3, 2, output_padding=(1, 0)
    )(x),
}


@pytest.mark.parametrize("body", ALIKE.values(), ids=ALIKE.keys())
def test_models_the_same_along_every_axis_are_alike(body: Callable[[Any], Any]) -> None:
    assert axes_alike(_model(body))


@pytest.mark.parametrize("body", NOT_ALIKE.values(), ids=NOT_ALIKE.keys())
def test_a_layer_that_differs_between_axes_makes_a_model_unlike(
    body: Callable[[Any], Any],
) -> None:
    assert not axes_alike(_model(body))


def test_fixed_sizes_spatial_constants_and_flattening_make_a_model_unlike() -> None:
    mask = np.triu(np.ones((8, 8, 1)))  # zero below the diagonal: not the same transposed
    assert not axes_alike(_model(lambda x: L.Conv2D(1, 1)(x) * mask, (8, 8, 3)))
    assert not axes_alike(_model(lambda x: L.Resizing(16, 8)(x)))
    assert axes_alike(_model(lambda x: L.Resizing(16, 16)(x)))
    flat = _model(lambda x: L.Reshape((4, 4, 12))(L.Flatten()(x)), (8, 8, 3))
    assert not axes_alike(flat)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="proved on TensorFlow")
def test_the_provider_claims_it_only_where_it_is_proved() -> None:
    square = _model(_squeeze_excite)
    assert KerasGradientProvider(square, input_shape=(32, 32, 3)).axes_alike("output")
    # the user's own weights (any zero tap breaks the symmetry), a second input
    assert not KerasGradientProvider(square, input_shape=(32, 32, 3), linearize=False).axes_alike(
        "output"
    )
    image = keras.Input((None, None, 3), name="image")
    mask = keras.Input((None, None, 1), name="mask")
    two = keras.Model([image, mask], L.Conv2D(4, 3)(L.Concatenate()([image, mask])))
    second = KerasGradientProvider(two, input_shape=(32, 32, 3), input="image")
    assert not second.axes_alike("output")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="proved on TensorFlow")
@pytest.mark.parametrize("body", BY_WINDOWS.values(), ids=BY_WINDOWS.keys())
def test_windows_alike_only_in_their_sum_measure_exactly(body: Callable[[Any], Any]) -> None:
    model = _model(body)
    provider = KerasGradientProvider(model, input_shape=(33, 33, 3))
    assert provider.axes_alike("output")
    rf = estimate(provider, "output")
    assert (rf.size, rf.stride, rf.padding) == field_of(model, (33, 33))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="proved on TensorFlow")
def test_a_square_input_is_probed_along_its_last_axis_only() -> None:
    # stem 3x3 s2 'valid' (size 3, stride 2, padding 0), 'same' 3x3 s2 (TensorFlow puts
    # the extra pixel at the end: padding 0 at an even size), 2x2 pool: size 3 + 2*2 + 4*1
    # = 11, stride 8, padding 0 + 2*0 + 4*0 = 0
    model = _model(lambda x: L.MaxPooling2D(2)(L.Conv2D(4, 3, 2, "same")(L.Conv2D(4, 3, 2)(x))))
    provider = KerasGradientProvider(model, input_shape=(65, 65, 3))
    shapes: list[tuple[int, ...]] = []
    maps = provider.gradient_maps

    def recording(spatial: tuple[int, ...], name: str, units: Any) -> Any:
        shapes.append(tuple(spatial))
        return maps(spatial, name, units)

    provider.gradient_maps = recording  # type: ignore[method-assign]
    rf = estimate(provider, "output")
    assert (rf.size, rf.stride, rf.padding) == ((11, 11), (8, 8), (0, 0))
    assert all(shape[0] <= 65 for shape in shapes)
    assert max(shape[1] for shape in shapes) > 65
