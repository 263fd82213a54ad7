"""Decoders in Keras: the exact field of every output unit, checked against brute force.

The architectures of ``tests/test_decoders.py`` with Keras layers (``UpSampling``,
``Conv*DTranspose``; pixel shuffle as a small custom layer). Each is compared unit by
unit with `decoder_oracle` run on a float64 copy of the network whose kernels are positive.
``nox -s keras_applications_backends`` runs them on Keras' JAX and PyTorch backends too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras import layers as L  # noqa: E402

import rfest  # noqa: E402
from decoder_oracle import check_every_unit  # noqa: E402

pytestmark = pytest.mark.keras

Build = Callable[[], "keras.Model"]


def float64() -> contextlib.AbstractContextManager[object]:
    """Float64 arrays for the oracle's copy: JAX truncates them unless x64 is on."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def forward_of(build: Build, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    before = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        with float64():
            model = build()
    finally:
        keras.config.set_floatx(before)
    for weight in model.weights:
        if weight.path.endswith("kernel"):
            shape = tuple(weight.shape)
            weight.assign(np.full(shape, 1.0 / np.prod(shape[:-1])))

    def forward(x: np.ndarray) -> np.ndarray:
        inputs = np.broadcast_to(x[..., None], (*x.shape, channels)).astype("float64")
        with float64():
            out = model(inputs, training=False)
        if keras.backend.backend() == "torch":  # np.array of a torch tensor warns (NumPy 2)
            out = out.detach().cpu().numpy()
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float64).sum(axis=-1)

    return forward


def measure(build: Build, shape: tuple[int, ...]) -> rfest.ReceptiveField:
    with pytest.warns(rfest.NonUniformWarning, match="differ"):
        rf = rfest.compute(build(), shape)
    assert not rf.uniform
    check_every_unit(rf, forward_of(build, shape[-1]))
    return rf


def model(shape: tuple[int | None, ...], *layers: Callable[..., object]) -> Build:
    def build() -> keras.Model:
        inputs = keras.Input(shape)
        x = inputs
        for layer in layers:
            x = layer()(x)  # type: ignore[operator]
        return keras.Model(inputs, x)

    return build


def conv(c: int, stride: int = 1) -> Callable[[], L.Layer]:
    return lambda: L.Conv2D(c, 3, strides=stride, padding="same")


@pytest.mark.parametrize(("interpolation", "factor"), [("nearest", 2), ("bilinear", 4)])
def test_upsampling(interpolation: str, factor: int) -> None:
    # conv s2 (j2), then up x factor: the pattern repeats every `factor` units, 2 px on.
    up = lambda: L.UpSampling2D(factor, interpolation=interpolation)  # noqa: E731
    rf = measure(model((24, 20, 1), conv(2, 2), up, conv(1)), (24, 20, 1))
    assert rf.period == (factor, factor) and rf.period_step == (2, 2)


@pytest.mark.parametrize(
    ("kernel", "padding", "output_padding"),
    [(2, "valid", None), (3, "same", 1), (3, "valid", None), (4, "same", None)],
)
def test_transposed_convolution(kernel: int, padding: str, output_padding: int | None) -> None:
    def up() -> L.Layer:
        return L.Conv2DTranspose(1, kernel, 2, padding=padding, output_padding=output_padding)

    rf = measure(model((18, 16, 1), conv(2), up), (18, 16, 1))
    assert rf.period == (2, 2) and rf.period_step == (1, 1)


@keras.saving.register_keras_serializable(package="rfest_decoder_tests")
class PixelShuffle(L.Layer):  # type: ignore[misc]
    """(h, w, 4c) -> (2h, 2w, c), as torch.nn.PixelShuffle(2); any input size."""

    def call(self, x: object) -> object:
        ops = keras.ops
        b, h, w, c = ops.shape(x)
        x = ops.reshape(x, (b, h, w, 2, 2, c // 4))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, 2 * h, 2 * w, c // 4))

    def compute_output_shape(self, s: tuple[int | None, ...]) -> tuple[int | None, ...]:
        twice = tuple(None if n is None else 2 * n for n in s[1:3])
        return (s[0], *twice, None if s[3] is None else s[3] // 4)


def test_pixel_shuffle() -> None:
    # conv k3 p1 to 4 channels, shuffled by 2: period 2, one pixel on.
    rf = measure(model((None, None, 1), conv(4), PixelShuffle), (16, 16, 1))
    assert rf.period == (2, 2) and rf.period_step == (1, 1)


def unet(c: int = 2) -> keras.Model:
    def block(x: object, o: int) -> object:
        x = L.ReLU()(L.Conv2D(o, 3, padding="same")(x))
        return L.ReLU()(L.Conv2D(o, 3, padding="same")(x))

    inputs = keras.Input((64, 56, 1))
    a = block(inputs, c)
    b = block(L.AveragePooling2D(2)(a), 2 * c)
    up = L.Conv2DTranspose(2 * c, 2, 2)(block(L.AveragePooling2D(2)(b), 4 * c))
    d = block(L.Concatenate()([up, b]), 2 * c)
    up = L.Conv2DTranspose(c, 2, 2)(d)
    return keras.Model(inputs, L.Conv2D(1, 1)(block(L.Concatenate()([up, a]), c)))


def test_unet_output_layer() -> None:
    rf = measure(unet, (64, 56, 1))
    assert rf.period == (4, 4) and rf.period_step == (4, 4)


def fpn(c: int = 2) -> keras.Model:
    inputs = keras.Input((96, 80, 1))
    c2 = conv(c, 2)()(conv(c, 2)()(inputs))
    c3 = conv(c, 2)()(c2)
    p4 = L.Conv2D(c, 1)(conv(c, 2)()(c3))
    p3 = L.Add()([L.Conv2D(c, 1)(c3), L.UpSampling2D(2)(p4)])
    p2 = L.Add()([L.Conv2D(c, 1)(c2), L.UpSampling2D(2)(p3)])
    return keras.Model(inputs, conv(c)()(p2))


def test_fpn_p2() -> None:
    rf = measure(fpn, (96, 80, 1))
    assert rf.period == (4, 4) and rf.period_step == (16, 16)


def generator() -> keras.Model:
    inputs = keras.Input((6, 6, 8))
    x = inputs
    for i, width in enumerate((8, 4, 4, 3)):
        x = L.Conv2DTranspose(width, 4, 2, padding="same")(x)
        x = L.ReLU()(L.BatchNormalization()(x)) if i < 3 else L.Activation("tanh")(x)
    return keras.Model(inputs, x)


def test_dcgan_generator() -> None:
    rf = measure(generator, (6, 6, 8))
    assert rf.period == (16, 16) and rf.period_step == (1, 1)


def test_3d() -> None:
    rf = measure(
        model(
            (9, 8, 10, 1),
            lambda: L.Conv3D(2, 3, padding="same"),
            lambda: L.Conv3DTranspose(1, 3, 2, padding="same"),
            lambda: L.UpSampling3D((1, 2, 1)),
        ),
        (9, 8, 10, 1),
    )
    assert rf.period == (2, 4, 2) and rf.period_step == (1, 1, 1)


def test_1d() -> None:
    rf = measure(
        model(
            (30, 1),
            lambda: L.Conv1D(2, 3, padding="same"),
            lambda: L.Conv1DTranspose(1, 4, 2, padding="same"),
            lambda: L.UpSampling1D(2),
        ),
        (30, 1),
    )
    assert rf.period == (4,) and rf.period_step == (1,)
