"""The effective field on every backend through the provider protocol.

The closed form of tests/test_effective_torch.py (n stacked 3-tap kernels of one positive
weight, no nonlinearity: sigma sqrt(2n/3) per axis, heatmap the outer product of
trinomial counts) is checked on Keras and JAX when their backends are installed and
their providers offer ``input_gradients``; otherwise those tests skip. A framework-free
fake provider checks the backend-neutral paths (token outputs reported by the provider
itself, a provider without ``input_gradients``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import rfest
from rfest import EffectiveField, effective
from rfest._errors import BackendError, RFEstError
from rfest._protocol import InputGradientProvider
from rfest._registry import load_backend, make_provider
from test_effective_stats import fewest_holding, trinomial

# ---------------------------------------------------------------- framework-free fakes


class PatchTokens:
    """Fake provider: a 1-channel 8 x 8 input cut into 2 x 2 patches, a class token first.

    Token ``1 + 4 r + c`` has gradient 1 on pixels 2r..2r+1 x 2c..2c+1, whatever the input;
    the class token has none. Channels first, as the protocol returns them.
    """

    spatial_shape = (8, 8)
    output_names = ("output",)

    def __init__(self, model: object, **options: Any) -> None:
        self.options = options

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> Mapping[str, tuple[int, ...]]:
        return {"output": (17,)}

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        raise AssertionError("the effective field never asks for linearized maps")

    def input_gradients(
        self, inputs: np.ndarray, output_name: str, unit: tuple[int, ...]
    ) -> np.ndarray:
        grads = np.zeros(inputs.shape)
        (token,) = unit
        if token >= 1:
            r, c = divmod(token - 1, 4)
            grads[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 1.0
        return grads


class NoInputGradients(PatchTokens):
    input_gradients = None  # type: ignore[assignment]


def test_tokens_reported_by_the_provider_map_onto_the_grid() -> None:
    # Centre unit of the 4 x 4 grid: (1, 1), token 1 + 4 + 1 = 6: pixels 2..3 x 2..3,
    # centre of mass (2.5, 2.5), sigma 0.5 per axis. No theoretical field for token outputs
    # reported natively (rfest.compute needs a spatial output).
    rfest.register_backend("erf-fake-tokens", PatchTokens, replace=True)
    erf = effective(
        object(),
        (1, 8, 8),
        backend="erf-fake-tokens",
        token_grid=(4, 4),
        prefix_tokens=1,
        num_images=3,
    )
    expected = np.zeros((8, 8))
    expected[2:4, 2:4] = 1.0
    np.testing.assert_array_equal(erf.heatmap, expected)
    assert erf.units == ((1, 1),) and erf.output_shape == (4, 4)
    assert erf.center_of_mass == (2.5, 2.5) and erf.sigma == (0.5, 0.5)
    assert erf.receptive_field is None
    # Grid unit (3, 0) is token 1 + 12 = 13: pixels 6..7 x 0..1.
    corner = effective(
        object(),
        (1, 8, 8),
        backend="erf-fake-tokens",
        token_grid=(4, 4),
        prefix_tokens=1,
        units=(3, 0),
        num_images=1,
    )
    assert corner.center_of_mass == (6.5, 0.5)
    with pytest.raises(RFEstError, match="16 tokens was expected"):
        effective(object(), (1, 8, 8), backend="erf-fake-tokens", token_grid=(4, 4))


def test_a_provider_without_input_gradients_is_a_clear_error() -> None:
    rfest.register_backend("erf-fake-no-inputs", NoInputGradients, replace=True)
    with pytest.raises(BackendError, match="input_gradients"):
        effective(object(), (1, 8, 8), backend="erf-fake-no-inputs")


# ---------------------------------------------------------------- Keras and JAX


def backend_or_skip(name: str, framework: str) -> Any:
    """The framework's module; skips only when the framework is missing (a backend that
    fails to load is a failure, not a skip)."""
    module = pytest.importorskip(framework)
    load_backend(name)
    return module


def skip_without_input_gradients(name: str, model: Any, shape: tuple[int, ...]) -> None:
    """Every first-party provider differentiates at given inputs: a failure if not."""
    provider = make_provider(name, model, input_shape=shape, linearize=False)
    assert isinstance(provider, InputGradientProvider), name


def check_closed_form(erf: EffectiveField, rows: int, cols: int, tolerance: float = 1e-9) -> None:
    """29 x 35 input, centre unit (14, 17), ``rows`` / ``cols`` 3-tap kernels per axis."""
    assert erf.center_of_mass == pytest.approx((14.0, 17.0), abs=tolerance)
    sigma = (math.sqrt(2 * rows / 3), math.sqrt(2 * cols / 3))
    assert erf.sigma == pytest.approx(sigma, abs=tolerance)
    expected = np.zeros((29, 35))
    expected[14 - rows : 15 + rows, 17 - cols : 18 + cols] = np.outer(
        trinomial(rows), trinomial(cols)
    )
    np.testing.assert_allclose(
        erf.heatmap / erf.heatmap.sum(),
        expected / expected.sum(),
        rtol=1e-12 if tolerance <= 1e-9 else 1e-6,
        atol=1e-15 if tolerance <= 1e-9 else 1e-9,
    )
    assert erf.extent[0.9] == (
        fewest_holding(trinomial(rows), Fraction("0.9")),
        fewest_holding(trinomial(cols), Fraction("0.9")),
    )


# Kernels per case: n square 3x3 kernels, then m kernels 3x1 (crossing axis 0 only).
CASES = [(1, 0), (3, 0), (6, 0), (2, 3)]


@pytest.mark.keras
# Keras on TensorFlow converts variables with np.array(x, copy=False): not rfest's to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
@pytest.mark.parametrize(("n", "m"), CASES)
def test_keras_stacked_uniform_convolutions(n: int, m: int) -> None:
    shape = (29, 35, 2)  # channels last
    keras = backend_or_skip("keras", "keras")

    def build() -> Any:
        layers = [keras.Input(shape)]
        for kernel in [(3, 3)] * n + [(3, 1)] * m:
            layers.append(
                keras.layers.Conv2D(
                    3,
                    kernel,
                    padding="same",
                    use_bias=False,
                    kernel_initializer=keras.initializers.Constant(0.2),
                )
            )
        return keras.Sequential(layers)

    model = build()
    skip_without_input_gradients("keras", model, shape)
    erf = effective(model, shape, backend="keras", num_images=4, batch_size=2, theoretical=False)
    check_closed_form(erf, n + m, n)


@pytest.mark.jax
@pytest.mark.parametrize(("n", "m"), CASES)
def test_jax_stacked_uniform_convolutions(n: int, m: int) -> None:
    shape = (29, 35, 2)  # channels last
    jax = backend_or_skip("jax", "jax")
    kernels = [np.full((3, 3, 2 if k == 0 else 3, 3), 0.2) for k in range(n)] + [
        np.full((3, 1, 2 if n == 0 and k == 0 else 3, 3), 0.2) for k in range(m)
    ]

    def model(x: Any) -> Any:
        for kernel in kernels:
            x = jax.lax.conv_general_dilated(
                x,
                jax.numpy.asarray(kernel, dtype=x.dtype),
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return x

    skip_without_input_gradients("jax", model, shape)
    erf = effective(model, shape, backend="jax", num_images=4, batch_size=2, theoretical=False)
    check_closed_form(erf, n + m, n)
