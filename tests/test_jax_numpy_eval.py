"""The numpy evaluator of narrowed programs computes what XLA computes, primitive by primitive.

Each program below is traced with ``jax.make_jaxpr`` and run twice: by numpy
(``rfest_jax._numpy_eval``) and by JAX itself; the results must be equal (to rounding).
The programs cover every rule's parameters that pullbacks of narrowed networks use:
padding with interior and negative edges, windowed sums with strides, padding, window and
base dilation, contractions with batch axes, selections, broadcasts reduced again.
``tests/test_jax_narrow.py`` compares whole networks (numpy, narrowed) with the full-width
maps (XLA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import rfest_jax  # noqa: E402
from flax_models import readme_function  # noqa: E402
from rfest_jax._numpy_eval import Unsupported, numpy_program  # noqa: E402

pytestmark = pytest.mark.jax

Array = Any
_RNG = np.random.default_rng(0)
_WEIGHTS = _RNG.random((6, 4))


def _windows(x: Array) -> Array:
    y = lax.reduce_window(
        x, 0.0, lax.add, (1, 3, 2, 1), (1, 2, 1, 1), ((0, 0), (1, 2), (0, 1), (0, 0))
    )
    z = lax.reduce_window(
        x, 0.0, lax.add, (1, 2, 3, 1), (1, 1, 2, 1), ((0, 0), (2, 0), (1, 1), (0, 0)),
        base_dilation=(1, 2, 1, 1), window_dilation=(1, 1, 2, 1),
    )  # fmt: skip
    return y.sum() + z


def _pads(x: Array) -> Array:
    a = lax.pad(x, 0.5, ((0, 0, 0), (2, -1, 1), (-2, 3, 2), (1, 0, 0)))
    b = jax.jit(lambda y: lax.pad(y, 0.0, ((0, 0, 0), (-1, -1, 0), (0, 0, 0), (0, 0, 0))))(x)
    return a.sum() + b


def _contractions(x: Array) -> Array:
    w = jnp.asarray(_WEIGHTS)
    y = x.reshape(2, 35, 6) @ w  # (2, 35, 4)
    z = jnp.einsum("bij,bkj->bik", y, y)  # batch axis and contraction
    return jnp.abs(z).sum(axis=1)[..., None] + lax.dot_general(y, w.T, (((2,), (0,)), ((), ())))[0]


def _structure(x: Array) -> Array:
    grid = lax.broadcasted_iota(jnp.int32, (2, 5, 7, 3), 1)
    picked = jnp.where(grid > 2, x[..., :3], -x[..., 3:])
    parts = jnp.split(x, [2, 5], axis=-1)
    joined = jnp.concatenate([parts[2], parts[0]], axis=3)
    shuffled = jnp.transpose(lax.rev(joined, (1,)), (0, 2, 1, 3))
    wide = jnp.broadcast_to(x[..., :1], (2, 5, 7, 8))  # reduced again along a broadcast axis
    counts = lax.cumsum(x, axis=1, reverse=True) + lax.cumsum(x, axis=2)
    return (
        picked.sum()
        + shuffled[:, ::2, 1:4:2].sum()
        + jnp.abs(wide).sum(axis=(0, 3))[None, :, :, None]
        + jnp.clip(counts, 0.2, 3.0)
        + jnp.maximum(x, 0.3) * jnp.exp(-x) / (1.0 + x**2)
    )


def _window_sum(x: Array, strides: tuple[int, ...], padding: Any) -> Array:
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 3, 1), strides, padding)


def _padded_windows(x: Array) -> Array:
    # A strided layer's pullback: spread, pad, sum windows (folded into one window sum).
    config = ((0, 0, 0), (1, 2, 1), (2, 1, 2), (0, 0, 0))
    a = _window_sum(lax.pad(x, 0.0, config), (1, 1, 1, 1), ((0, 0), (1, -2), (-1, 2), (0, 0)))
    # Not folded: cropped then padded on one side; spread then strided; read twice.
    cropped = lax.pad(x, 0.0, ((0, 0, 0), (-1, 0, 0), (0, 0, 0), (0, 0, 0)))
    b = _window_sum(cropped, (1, 1, 1, 1), ((0, 0), (2, 0), (0, 0), (0, 0)))
    strided = _window_sum(lax.pad(x, 0.0, config), (1, 2, 2, 1), ((0, 0),) * 4)
    twice = lax.pad(x, 0.0, ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0)))
    c = _window_sum(twice, (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (0, 0)))
    return a.sum() + b.sum() + strided.sum() + c[:, :5, :7] + twice[:, :5, :7]


def _steps(x: Array) -> Array:
    # A Python loop over an axis (Keras' TimeDistributed at a known length): ``unstack``,
    # and its pullback ``stack``.
    def two_steps(y: Array) -> Array:
        parts = jnp.unstack(y, axis=1)
        return parts[0] * 2.0 + parts[3]

    out, pullback = jax.vjp(two_steps, x)
    (grad,) = pullback(jnp.ones_like(out))
    return grad + out[:, None]


def _sum_of_steps(x: Array) -> Array:
    # The pullback of one slice per step pads each step's gradient to the full length and
    # sums them (an addition into a region, in place from the second on), and one step read
    # twice keeps its padded gradient for later.
    def steps(y: Array) -> Array:
        return sum((y[:, i] * (i + 1.0) for i in range(y.shape[1])), y[:, 2] ** 2)

    out, pullback = jax.vjp(steps, x)
    (grad,) = pullback(jnp.ones_like(out))
    return grad + jnp.pad(x[:, 1:], ((0, 0), (1, 0), (0, 0), (0, 0))) + x


PROGRAMS: dict[str, Callable[[Array], Array]] = {
    "windowed sums": _windows,
    "padding, a nested jit": _pads,
    "contractions": _contractions,
    "selections, slices, broadcasts": _structure,
    "padding read by window sums": _padded_windows,
    "steps of a loop over an axis": _steps,
    "a sum of padded steps": _sum_of_steps,
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_numpy_program_computes_what_jax_computes(name: str) -> None:
    function = PROGRAMS[name]
    x = _RNG.random((2, 5, 7, 6))
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(function)(x)
        expected = np.asarray(function(jnp.asarray(x)))
    program = numpy_program(closed)
    assert program is not None
    (got,) = program(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_padding_read_only_by_a_window_sum_is_never_built() -> None:
    x = np.ones((2, 5, 7, 6))
    with jax.enable_x64(True):
        program = numpy_program(jax.make_jaxpr(_padded_windows)(x))
    assert program is not None
    pads = [e for e in program.jaxpr.eqns if e.primitive.name == "pad"]
    # one of four folded into its window sum (see _padded_windows)
    assert len(pads) == 3


def test_padded_steps_are_added_into_one_array() -> None:
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(_sum_of_steps)(_RNG.random((2, 5, 7, 6)))
    program = numpy_program(closed)
    assert program is not None
    names = [eqn.primitive.name for eqn in program.jaxpr.eqns]
    before = [eqn.primitive.name for eqn in closed.jaxpr.eqns]
    assert before.count("pad") >= 5 and names.count("pad") == before.count("pad") - 5
    assert names.count("rfest_add_padded") == 5
    in_place = [e.params["in_place"] for e in program.jaxpr.eqns if "in_place" in e.params]
    assert in_place.count(True) >= 3  # each sum read once adds into its own array


def test_programs_it_cannot_run_are_left_to_the_compiler() -> None:
    kernel = jnp.ones((3, 3, 2, 2))

    def convolved(x: Array) -> Array:
        return lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    assert numpy_program(jax.make_jaxpr(convolved)(jnp.ones((1, 5, 5, 2)))) is None
    divided = numpy_program(jax.make_jaxpr(lambda i: lax.div(i, 3))(jnp.arange(4)))
    assert divided is not None  # integer division rounds towards zero in lax
    with pytest.raises(Unsupported):
        divided(np.arange(-4, 0))


def test_overflow_gives_inf_without_a_warning_as_in_xla() -> None:
    # Warnings are errors in the suite; the estimator reads inf and nan as non-finite maps.
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(lambda x: (x * 1e300) * 1e300 - x / 0.0)(np.ones(3))
    program = numpy_program(closed)
    assert program is not None
    (got,) = program(np.array([1.0, 0.0, -1.0]))
    assert np.isnan(got[1]) and not np.isfinite(got).any()


def test_a_narrowed_network_runs_in_numpy() -> None:
    # The fast path is taken (no XLA compilation), and gives the hand-derived field.
    net = readme_function()
    p = rfest_jax.provider(net, input_shape=(40, 40, 3))
    maps = p.gradient_maps((40, 40), "output", [(1, 1)])
    (trace,) = p._traces.values()
    assert [type(c).__name__ for c in trace.compiled.values()] == ["_NumpyMaps"]
    # README net: size 34, stride 4, padding 0 -> unit 1 sees rows and columns 4..37.
    rows, cols = np.nonzero(maps[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 37, 4, 37)
