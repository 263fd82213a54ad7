"""Constants a JAX program builds itself keep their zeros in the linearized copy.

``jax.image.resize`` interpolates by a matrix product with a matrix built from ``iota``:
its zeros are the geometry, so every unit is checked against a brute-force support
(`decoder_oracle`) of a positive-weight float64 copy. A weight matrix closed over by a
plain function is model data: whatever its zeros and signs, the field is the dense
layer's whole input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402
from decoder_oracle import check_every_unit  # noqa: E402
from flax_models import conv  # noqa: E402

pytestmark = pytest.mark.jax

Array = Any


@pytest.fixture(autouse=True)
def jax_backend() -> None:
    if "jax" not in rfest.available_backends():
        rfest.register_backend("jax", rfest_jax.provider, replace=True)


def line(kernel: Array) -> Callable[[Array], Array]:
    """k3 s2 p1 convolution (jump 2), then linear upsampling x2 along the one axis."""

    def net(x: Array) -> Array:
        y = conv(x, kernel, stride=2, padding=[(1, 1)])
        return jax.image.resize(y, (y.shape[0], 2 * y.shape[1], y.shape[2]), "linear")

    return net


def plane(kernel: Array) -> Callable[[Array], Array]:
    """k3 s2 p1 convolution, then bilinear upsampling x2 along both axes."""

    def net(x: Array) -> Array:
        y = conv(x, kernel, stride=2, padding=[(1, 1), (1, 1)])
        n, h, w, c = y.shape
        return jax.image.resize(y, (n, 2 * h, 2 * w, c), "bilinear")

    return net


def oracle(build: Callable[[Array], Callable[[Array], Array]], kernel_shape: tuple[int, ...]):
    """Brute force on a copy with every kernel entry positive, in float64."""

    def forward(x: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            kernel = jnp.full(kernel_shape, 1.0 / np.prod(kernel_shape[:-1]), jnp.float64)
            return np.asarray(build(kernel)(jnp.asarray(x)[..., None]).sum(axis=-1))

    return forward


@pytest.mark.parametrize(
    ("build", "kernel_shape", "shape"),
    [(line, (3, 1, 2), (28, 1)), (plane, (3, 3, 1, 2), (20, 18, 1))],
    ids=["linear 1-D", "bilinear 2-D"],
)
def test_resize_is_local(
    build: Callable[[Array], Callable[[Array], Array]],
    kernel_shape: tuple[int, ...],
    shape: tuple[int, ...],
) -> None:
    # Kernel with a zero and negative entries: the linearized copy must not care.
    kernel = jax.random.normal(jax.random.key(0), kernel_shape).at[0].set(0.0)
    with pytest.warns(rfest.NonUniformWarning, match="differ"):
        rf = rfest.compute(build(kernel), shape, backend="jax")
    assert not rf.uniform and rf.period == (2,) * (len(shape) - 1)
    check_every_unit(rf, oracle(build, kernel_shape))


def test_closed_over_weight_matrix_is_a_weight() -> None:
    # A dense layer over windows of 5 whose closed-over matrix has zero outer rows and
    # signs: the real gradient reaches 3 rows, but it is a weight, so the field is the
    # whole window (5, stride 1, no padding), by hand.
    weights = np.zeros((5, 2), np.float32)
    weights[1:4] = [[1.0, 0.0], [-2.0, 0.5], [0.0, 3.0]]

    def dense(x: Array) -> Array:
        n = x.shape[1]
        windows = jnp.stack([x[:, k : n - 4 + k, 0] for k in range(5)], axis=-1)
        return windows @ jnp.asarray(weights)

    jaxpr = jax.make_jaxpr(dense)(jnp.ones((1, 12, 1)))
    assert len(jaxpr.jaxpr.constvars) == 1  # the matrix reaches the interpreter as data
    rf = rfest.compute(dense, (12, 1), backend="jax")
    assert (rf.size, rf.stride, rf.padding) == ((5,), (1,), (0,))
    real = rfest.compute(dense, (12, 1), backend="jax", linearize=False)
    assert real.size == (3,)  # the zeros were there: only the weight rule widens it
