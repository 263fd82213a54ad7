"""Decoders in Flax (Linen): the exact field of every output unit, checked against brute force.

The same architectures as ``tests/test_decoders.py`` where Flax has the layer
(``jax.image.resize`` for upsampling, ``nn.ConvTranspose``, pixel shuffle by reshaping).
Each is compared unit by unit with `decoder_oracle` run on a positive-weight float64 copy.
JAX compiles every probe shape, so this is a subset of the PyTorch cases (the FPN top-down
path, nearest upsampling and addition, runs in the Keras suite).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402
from decoder_oracle import check_every_unit  # noqa: E402
from flax_models import linen_pair  # noqa: E402

pytestmark = pytest.mark.jax


@pytest.fixture(autouse=True)
def jax_backend() -> None:
    if "jax" not in rfest.available_backends():
        rfest.register_backend("jax", rfest_jax.provider, replace=True)


def _positive(path: tuple[Any, ...], leaf: Any) -> Any:
    name = str(getattr(path[-1], "key", path[-1]))
    value = {"bias": 0.0, "mean": 0.0}.get(name, 1.0)
    if name == "kernel":
        value = 1.0 / float(np.prod(leaf.shape[:-1]))
    return jnp.full(leaf.shape, value, dtype=jnp.float64)


def forward_of(
    module: nn.Module, variables: Any, channels: int
) -> Callable[[np.ndarray], np.ndarray]:
    def forward(x: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            positive = jax.tree_util.tree_map_with_path(_positive, variables)
            inputs = jnp.broadcast_to(jnp.asarray(x)[..., None], (*x.shape, channels))
            return np.asarray(module.apply(positive, inputs).sum(axis=-1))

    return forward


def measure(module: nn.Module, shape: tuple[int, ...], **options: Any) -> rfest.ReceptiveField:
    pair = linen_pair(module, shape)
    with pytest.warns(rfest.NonUniformWarning, match="differ"):
        rf = rfest.compute(pair, shape, **options)
    assert not rf.uniform
    check_every_unit(rf, forward_of(*pair, shape[-1]))
    return rf


def upsample(x: Any, factors: Sequence[int], method: str) -> Any:
    shape = (x.shape[0], *(n * f for n, f in zip(x.shape[1:-1], factors, strict=True)), x.shape[-1])
    return jax.image.resize(x, shape, method=method)


def conv(c: int, k: int = 3, stride: int = 1, dims: int = 2) -> nn.Conv:
    return nn.Conv(c, (k,) * dims, strides=stride, padding=[(k // 2, k // 2)] * dims)


class Upsampling(nn.Module):
    factor: int
    method: str

    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = upsample(conv(2, stride=2)(x), (self.factor,) * 2, self.method)
        return conv(1)(x)


@pytest.mark.parametrize(("method", "factor"), [("nearest", 2), ("bilinear", 4)])
def test_upsampling(method: str, factor: int) -> None:
    # conv s2 (j2), then up x factor: the pattern repeats every `factor` units, 2 px on.
    # Bilinear interpolates by a matrix product with a structural constant matrix, whose
    # zeros the linearized copy keeps.
    rf = measure(Upsampling(factor, method), (24, 20, 1))
    assert rf.period == (factor, factor) and rf.period_step == (2, 2)


class Transposed(nn.Module):
    kernel: int
    padding: Any

    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = conv(2)(x)
        return nn.ConvTranspose(1, (self.kernel,) * 2, strides=(2, 2), padding=self.padding)(x)


@pytest.mark.parametrize(
    ("kernel", "padding"),
    [(2, "VALID"), (3, "SAME"), (4, ((2, 1), (1, 2)))],
)
def test_transposed_convolution(kernel: int, padding: Any) -> None:
    rf = measure(Transposed(kernel, padding), (18, 16, 1))
    assert rf.period == (2, 2) and rf.period_step == (1, 1)


class Shuffle(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = conv(4)(x)
        b, h, w, _ = x.shape
        x = x.reshape(b, h, w, 2, 2, 1).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, 2 * h, 2 * w, 1)


def test_pixel_shuffle() -> None:
    rf = measure(Shuffle(), (16, 16, 1))
    assert rf.period == (2, 2) and rf.period_step == (1, 1)


class UNet(nn.Module):
    c: int = 2

    @nn.compact
    def __call__(self, x: Any) -> Any:
        def block(x: Any, o: int) -> Any:
            return nn.relu(conv(o)(nn.relu(conv(o)(x))))

        def pool(x: Any) -> Any:
            return nn.avg_pool(x, (2, 2), (2, 2))

        a = block(x, self.c)
        b = block(pool(a), 2 * self.c)
        up = nn.ConvTranspose(2 * self.c, (2, 2), strides=(2, 2))(block(pool(b), 4 * self.c))
        d = block(jnp.concatenate([up, b], -1), 2 * self.c)
        up = nn.ConvTranspose(self.c, (2, 2), strides=(2, 2))(d)
        return nn.Conv(1, (1, 1))(block(jnp.concatenate([up, a], -1), self.c))


def test_unet_output_layer() -> None:
    # One channel at the top level: JAX's time goes into compiling and float64 convolutions.
    rf = measure(UNet(c=1), (64, 56, 1))
    assert rf.period == (4, 4) and rf.period_step == (4, 4)


class Generator(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        for i, width in enumerate((4, 2, 2, 1)):
            x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME")(x)
            if i < 3:
                x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        return jnp.tanh(x)


def test_dcgan_generator() -> None:
    rf = measure(Generator(), (6, 6, 4))
    assert rf.period == (16, 16) and rf.period_step == (1, 1)


class Volume(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = conv(2, dims=3)(x)
        x = nn.ConvTranspose(1, (3, 3, 3), strides=(2, 2, 2), padding="SAME")(x)
        return upsample(x, (1, 2, 1), "nearest")


def test_3d() -> None:
    rf = measure(Volume(), (9, 8, 10, 1))
    assert rf.period == (2, 4, 2) and rf.period_step == (1, 1, 1)


class Line(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = conv(2, dims=1)(x)
        x = nn.ConvTranspose(1, (4,), strides=(2,), padding="SAME")(x)
        return upsample(x, (2,), "nearest")


def test_1d() -> None:
    rf = measure(Line(), (30, 1))
    assert rf.period == (4,) and rf.period_step == (1,)


def test_uniform_results_keep_their_meaning() -> None:
    # k3 p1 then k3 s2 p1: 5 / 2 / 2, a uniform field of period 1.
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return conv(1, stride=2)(conv(1)(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rf = rfest.compute(linen_pair(Plain(), (16, 16, 1)), (16, 16, 1))
    assert (rf.size, rf.stride, rf.padding) == ((5, 5), (2, 2), (2, 2))
    assert rf.uniform and rf.pattern is None and rf.period == (1, 1)
