"""Traces and programs shared between calls on one model: reused, and never stale."""

from __future__ import annotations

import gc

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402
from flax_models import conv, linen_pair, random_kernel  # noqa: E402
from rfest_jax import _shared  # noqa: E402

pytestmark = pytest.mark.jax


@pytest.fixture(autouse=True)
def jax_backend() -> None:
    if "jax" not in rfest.available_backends():
        rfest.register_backend("jax", rfest_jax.provider, replace=True)


class Two(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # k3 then k5: 1 + 2 + 4 = 7
        return nn.Conv(2, (5, 5), padding="VALID")(nn.Conv(2, (3, 3), padding="VALID")(x))


class Net(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.a = nnx.Conv(1, 2, (3, 3), padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.a(x)


def test_a_second_call_on_a_linen_model_reuses_its_traces() -> None:
    pair = linen_pair(Two(), (16, 16, 1))
    first = rfest_jax.provider(pair, input_shape=(16, 16, 1))
    assert rfest.compute(pair, (16, 16, 1)).size == (7, 7)
    second = rfest_jax.provider(pair, input_shape=(16, 16, 1))
    assert second._traces is first._traces and first._traces
    assert rfest.compute(pair, (16, 16, 1)).size == (7, 7)


def test_an_nnx_module_changed_in_place_is_traced_again() -> None:
    model = Net(rngs=nnx.Rngs(0))
    assert rfest.compute(model, (16, 16, 1)).size == (3, 3)
    model.a = nnx.Conv(1, 2, (5, 5), padding="VALID", rngs=nnx.Rngs(1))  # k5: 5
    assert rfest.compute(model, (16, 16, 1)).size == (5, 5)


def test_a_new_closure_is_a_new_function() -> None:
    def make(k: int):  # type: ignore[no-untyped-def]
        kernel = random_kernel(0, k, k, 1, 2)
        return lambda x: conv(x, kernel)

    assert rfest.compute(make(3), (16, 16, 1), backend="jax").size == (3, 3)
    assert rfest.compute(make(7), (16, 16, 1), backend="jax").size == (7, 7)


def test_an_entry_goes_with_its_model() -> None:
    model = Net(rngs=nnx.Rngs(0))
    rfest.compute(model, (16, 16, 1))
    assert any(ref() is model for ref, _ in _shared._entries.values())
    del model
    gc.collect()
    assert all(ref() is not None for ref, _ in _shared._entries.values())
