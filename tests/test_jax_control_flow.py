"""Weights used inside control flow are linearized too.

rfest_jax rewrites primitives on live values, but runs ``scan``/``while``/``cond`` bodies
unchanged; a Flax parameter used inside one is made positive (``1 / fan_in``) beforehand,
in the variables, by ``rfest_jax._models._positive_params``. Worked answer: a 3x3 'SAME'
convolution applied twice in a ``fori_loop`` whose kernel is zero but at its centre. The
linearized field is that of two 3x3 layers, 5x5 (padding 2); the real kernel sees 1x1.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.jax

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import rfest  # noqa: E402


class Looped(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", lambda key, s: jnp.zeros(s).at[1, 1, 0, 0].set(1.0), (3, 3, 1, 1)
        )

        def body(i: int, y: jax.Array) -> jax.Array:
            return lax.conv_general_dilated(
                y, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        return lax.fori_loop(0, 2, body, x)


@pytest.fixture(scope="module")
def looped() -> tuple[nn.Module, dict[str, object]]:
    module = Looped()
    return module, module.init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 1)))


def test_a_kernel_inside_a_loop_is_linearized(looped: tuple[nn.Module, object]) -> None:
    rf = rfest.compute(looped, (16, 16, 1))
    assert (rf.size, rf.stride, rf.padding) == ((5, 5), (1, 1), (2, 2))


def test_the_real_kernel_inside_a_loop_is_used_as_is(looped: tuple[nn.Module, object]) -> None:
    rf = rfest.compute(looped, (16, 16, 1), linearize=False)
    assert (rf.size, rf.stride, rf.padding) == ((1, 1), (1, 1), (0, 0))
