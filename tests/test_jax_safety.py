"""The user's variables, NNX module state and JAX's x64 flag are left exactly as they were."""

from __future__ import annotations

from typing import Any

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402
from flax_models import (  # noqa: E402
    NNXConvBatchNormDropout,
    conv,
    linen_pair,
    nnx_model,
    random_kernel,
)

pytestmark = pytest.mark.jax


@pytest.fixture(autouse=True)
def jax_backend() -> None:
    if "jax" not in rfest.available_backends():
        rfest.register_backend("jax", rfest_jax.provider, replace=True)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(4, (3, 3), padding=1, name="a")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=False, name="bn")(x))
        x = nn.Dropout(0.5, deterministic=False)(x)
        return nn.Conv(4, (3, 3), padding=1, name="b")(x)


def leaves(tree: Any) -> list[tuple[str, np.ndarray, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        (
            jax.tree_util.keystr(path),
            np.asarray(jax.random.key_data(leaf))
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            else np.array(leaf),
            leaf.dtype,
        )
        for path, leaf in flat
    ]


def assert_same(before: list[tuple[str, np.ndarray, Any]], after: list[Any]) -> None:
    assert [k for k, _, _ in before] == [k for k, _, _ in after]
    for (key, a, dtype_a), (_, b, dtype_b) in zip(before, after, strict=True):
        assert dtype_a == dtype_b, key
        assert a.tobytes() == b.tobytes(), key  # bit-identical


def test_linen_variables_bit_identical_and_x64_flag_kept() -> None:
    module, variables = linen_pair(LinenNet(), (16, 16, 1))
    before, flag = leaves(variables), jax.config.jax_enable_x64
    rf = rfest.compute((module, variables), (16, 16, 1), output=["a", "b"])
    assert rf["b"].size == (5, 5)  # k3 p1 twice; batch norm and dropout are identity
    with pytest.raises(rfest.OutputNotFoundError, match="Did you mean 'b'"):
        rfest.compute((module, variables), (16, 16, 1), output="bx")
    assert_same(before, leaves(variables))
    assert jax.config.jax_enable_x64 == flag
    assert jnp.ones(1).dtype == jnp.float32


def test_nnx_module_state_bit_identical_including_rng_counts() -> None:
    model = nnx_model(NNXConvBatchNormDropout)
    before = leaves(nnx.state(model))
    graph_before = nnx.graphdef(model)
    assert rfest.compute(model, (16, 16, 1)).size == (5, 5)
    p = rfest_jax.provider(model, input_shape=(16, 16, 1), linearize=False)
    p.input_gradients(np.ones((2, 16, 16, 1)), "output", (8, 8))
    assert_same(before, leaves(nnx.state(model)))
    assert nnx.graphdef(model) == graph_before
    assert not jax.config.jax_enable_x64


def test_users_own_x64_setting_is_restored_both_ways() -> None:
    kernel = random_kernel(0, 3, 3, 1, 1)

    def net(x: jax.Array) -> jax.Array:
        return conv(x, kernel.astype(x.dtype))

    with jax.enable_x64(True):
        assert rfest.compute(net, (10, 10, 1), backend="jax", dtype="float32").size == (3, 3)
        assert rfest.compute(net, (10, 10, 1), backend="jax").size == (3, 3)
        assert jax.config.jax_enable_x64
    assert not jax.config.jax_enable_x64
    assert rfest.compute(net, (10, 10, 1), backend="jax").size == (3, 3)
    assert not jax.config.jax_enable_x64


def test_errors_say_what_to_fix() -> None:
    kernel = random_kernel(0, 3, 3, 3, 2)

    def net(x: jax.Array) -> jax.Array:
        return conv(x, kernel)

    with pytest.raises(rfest.UnrecognizedModelError, match="backend="):
        rfest.compute(net, (8, 8, 3))
    with pytest.raises(rfest.UnrecognizedModelError, match="variables"):
        rfest.compute(LinenNet(), (8, 8, 1), backend="jax")
    with pytest.raises(rfest.InputShapeError, match=r"\(\*spatial, C\)"):
        rfest.compute(net, backend="jax")
    with pytest.raises(rfest.ModelCallError, match="channels last") as info:
        rfest.compute(net, (3, 8, 8), backend="jax")
    assert info.value.__cause__ is not None
    with pytest.raises(rfest.NoDependenceError):
        rfest.compute(lambda x: jnp.ones((x.shape[0], 4, 4, 1)), (8, 8, 1), backend="jax")
