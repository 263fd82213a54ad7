"""The narrowed linearized pass computes what the full-width pass does.

Every network of the JAX tests, and networks built to defeat narrowing (grouped and
depthwise convolutions after a channel concatenation, channel slices and shuffles,
channel padding, input channels subtracted, dense heads, squeeze-excite, attention,
transposed convolutions), is differentiated twice through the JAX backend: narrowed (the
default) and with ``narrow=False``. The gradient maps must have the same support and the
same values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402
from flax_models import (  # noqa: E402
    NNXConvBatchNormDropout,
    NNXResNet50,
    ReadmeNetLinen,
    ReadmeNetNNX,
    ResNet50,
    conv,
    linen_pair,
    max_pool,
    nnx_model,
    random_kernel,
    readme_function,
)
from rfest_jax._interpret import Value, _Rules  # noqa: E402
from rfest_jax._provider import _NumpyMaps  # noqa: E402

pytestmark = pytest.mark.jax

Array = Any


def grouped(x: Array, kernel: Array, groups: int, padding: int = 1) -> Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        ((padding, padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def grouped_after_concat(x: Array) -> Array:
    a = conv(x, random_kernel(1, 3, 3, 2, 4), padding="SAME")
    b = conv(x, random_kernel(2, 5, 5, 2, 4), padding="SAME")
    both = jnp.concatenate([a, b], axis=-1)  # channels 0-3 differ from 4-7
    y = grouped(both, random_kernel(3, 3, 3, 4, 8), groups=2)
    return grouped(jax.nn.relu(y), random_kernel(4, 3, 3, 1, 8), groups=8)  # depthwise


def strided_depthwise_after_concat(x: Array) -> Array:
    # NASNet's separable convolutions after a concatenation: the depthwise convolution
    # sees channels that differ, and stays a window sum per channel (run in numpy).
    a = conv(x, random_kernel(1, 1, 1, 2, 3), padding="SAME")
    b = conv(x, random_kernel(2, 3, 3, 2, 3), padding="SAME")
    both = jax.nn.relu(jnp.concatenate([a, b], axis=-1))
    return lax.conv_general_dilated(
        both,
        random_kernel(3, 3, 3, 1, 6),
        (2, 2),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=6,
    )


def depthwise_separable(x: Array) -> Array:
    y = jax.nn.relu(conv(x, random_kernel(1, 3, 3, 2, 6)))
    y = grouped(y, random_kernel(2, 3, 3, 1, 6), groups=6)  # on narrowed channels
    return conv(y, random_kernel(3, 1, 1, 6, 4))


def channel_arithmetic(x: Array) -> Array:
    y = conv(x[..., :1] - 2 * x[..., 1:], random_kernel(1, 3, 3, 1, 6))
    mixed = y[..., :3] * 2.0 - y[..., 3:]  # slices of a narrowed value
    padded = jnp.pad(mixed, ((0, 0), (1, 1), (1, 1), (0, 2)))  # zero channels: not uniform
    return conv(padded, random_kernel(2, 3, 3, 5, 4))


def channel_shuffle(x: Array) -> Array:
    y = conv(x, random_kernel(1, 3, 3, 2, 8))
    y = jnp.concatenate([y[..., :4], 3.0 * y[..., 4:] + y[..., :4]], axis=-1)
    n, h, w, c = y.shape
    y = y.reshape(n, h, w, 2, c // 2).transpose(0, 1, 2, 4, 3).reshape(n, h, w, c)
    return grouped(y, random_kernel(2, 3, 3, 2, 4), groups=4)


def dense_head(x: Array) -> Array:
    y = max_pool(jax.nn.relu(conv(x, random_kernel(1, 3, 3, 2, 4))), 2, 2)
    return jnp.tanh(y.reshape(y.shape[0], -1) @ random_kernel(2, 4 * 4 * 4, 5))


def squeeze_excite(x: Array) -> Array:
    y = conv(x, random_kernel(1, 3, 3, 2, 8))
    gate = jax.nn.sigmoid(jax.nn.relu(y.mean(axis=(1, 2)) @ random_kernel(2, 8, 2)))
    gate = gate @ random_kernel(3, 2, 8)
    return conv(y * gate[:, None, None, :], random_kernel(4, 1, 1, 8, 8))


def attention(x: Array) -> Array:
    y = conv(x, random_kernel(1, 2, 2, 2, 8), stride=2)
    n, h, w, c = y.shape
    tokens = y.reshape(n, h * w, c)
    q, k, v = (jnp.einsum("ntc,cd->ntd", tokens, random_kernel(s, c, c)) for s in (2, 3, 4))
    weights = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / np.sqrt(c), axis=-1)
    mixed = jnp.einsum("nts,nsd->ntd", weights, v) + tokens
    return mixed.reshape(n, h, w, c)


def transposed_and_spatial_concat(x: Array) -> Array:
    y = conv(x, random_kernel(1, 3, 3, 2, 4), stride=2)
    up = lax.conv_transpose(
        y, random_kernel(2, 3, 3, 4, 4), (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    pooled = lax.reduce_window(up, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "SAME")
    return jnp.concatenate([pooled, up[:, :, ::-1]], axis=1)  # along a spatial axis


class NonSquare(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.relu(nn.Conv(4, (3, 5), strides=(1, 2), padding="VALID")(x))
        return nn.Conv(4, (5, 1), strides=(2, 1), padding=((2, 2), (0, 0)))(x)


class Normalised(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(4, (3, 3), padding=1)(x)
        x = nn.LayerNorm()(nn.GroupNorm(num_groups=2)(x))
        return nn.Dense(3)(nn.gelu(nn.Conv(4, (3, 3), padding=1)(x)))


def structural_mixing(x: Array) -> Array:
    # A channel-mixing matrix built from iota contracts narrowed channels; then bilinear
    # resize contracts a spatial axis with its interpolation matrix: both are structural.
    y = conv(x, random_kernel(1, 3, 3, 2, 6))
    mixing = (jnp.arange(6)[:, None] >= jnp.arange(3)[None, :]).astype(y.dtype) - 0.5
    z = y @ mixing
    return jax.image.resize(z, (z.shape[0], 2 * z.shape[1], z.shape[2] + 3, 3), "bilinear")


def conv3d(x: Array) -> Array:
    y = jax.nn.relu(conv(x, random_kernel(1, 3, 3, 3, 1, 4), stride=2, padding="SAME"))
    return conv(y, random_kernel(2, 3, 3, 3, 4, 4), dilation=2)


def conv1d(x: Array) -> Array:
    y = conv(x, random_kernel(1, 5, 2, 4), dilation=3)
    return jnp.maximum(conv(y, random_kernel(2, 3, 4, 4), stride=2), 0.0)


CASES: dict[str, tuple[Callable[[], Any], tuple[int, ...], str | None]] = {
    "readme linen": (lambda: linen_pair(ReadmeNetLinen(width=4), (40, 40, 3)), (40, 40, 3), None),
    "readme nnx": (lambda: nnx_model(ReadmeNetNNX), (40, 40, 3), "conv4"),
    "readme function": (readme_function, (40, 40, 3), None),
    "resnet50 linen": (lambda: linen_pair(ResNet50(width=4), (64, 64, 3)), (64, 64, 3), "layer3"),
    "resnet50 nnx": (lambda: nnx_model(NNXResNet50, 4), (64, 64, 3), "layer2"),
    "batch norm and dropout (nnx)": (lambda: nnx_model(NNXConvBatchNormDropout), (12, 12, 1), None),
    "non-square": (lambda: linen_pair(NonSquare(), (20, 27, 3)), (20, 27, 3), None),
    "normalised dense": (lambda: linen_pair(Normalised(), (10, 10, 1)), (10, 10, 1), None),
    "grouped after concat": (lambda: grouped_after_concat, (14, 14, 2), None),
    "depthwise separable": (lambda: depthwise_separable, (14, 14, 2), None),
    "strided depthwise after concat": (lambda: strided_depthwise_after_concat, (15, 15, 2), None),
    "channel arithmetic": (lambda: channel_arithmetic, (12, 12, 2), None),
    "channel shuffle": (lambda: channel_shuffle, (12, 12, 2), None),
    "dense head": (lambda: dense_head, (10, 10, 2), None),
    "squeeze-excite": (lambda: squeeze_excite, (12, 12, 2), None),
    "attention": (lambda: attention, (12, 12, 2), None),
    "transposed, spatial concat": (lambda: transposed_and_spatial_concat, (12, 12, 2), None),
    "structural mixing, resize": (lambda: structural_mixing, (10, 9, 2), None),
    "3-D": (lambda: conv3d, (12, 10, 11, 1), None),
    "1-D": (lambda: conv1d, (40, 2), None),
}


def _maps(model: Any, shape: tuple[int, ...], output: str | None, narrow: bool) -> np.ndarray:
    p = rfest_jax.provider(model, input_shape=shape, output=output, narrow=narrow)
    (name,) = p.output_names
    spatial = shape[:-1]
    out = p.output_shapes(spatial)[name]
    units = sorted({tuple(0 for _ in out), tuple(n // 2 for n in out), tuple(n - 1 for n in out)})
    return p.gradient_maps(spatial, name, units)


@pytest.mark.parametrize("case", list(CASES))
def test_narrowed_maps_equal_full_width_maps(case: str) -> None:
    build, shape, output = CASES[case]
    model = build()
    narrowed = _maps(model, shape, output, narrow=True)
    full = _maps(model, shape, output, narrow=False)
    assert (full > 0).any()
    np.testing.assert_array_equal(narrowed > 0, full > 0)
    np.testing.assert_allclose(narrowed, full, rtol=1e-9, atol=1e-12 * np.abs(full).max())


def _narrowed_axes(function: Callable[[Array], Array], shape: tuple[int, ...]) -> tuple[int, ...]:
    closed = jax.make_jaxpr(function)(jnp.ones((1, *shape)))
    rules = _Rules(linearize=True, dtype=np.dtype("float32"), narrow=True)
    found: list[tuple[int, ...]] = []

    def run(x: Array) -> Array:  # shapes only: traced, not run
        (out,) = rules.run(closed.jaxpr, closed.consts, [Value(x, live=True)])
        found.append(out.narrowed_axes)
        return out.array

    jax.eval_shape(run, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    return found[0]


def test_narrowing_reaches_the_output_where_channels_agree() -> None:
    # A check that the cases above do run narrowed: convolutions, residual sums, pooling,
    # depthwise convolutions keep one channel; a grouped convolution of differing
    # channels and attention's products of live values do not.
    assert _narrowed_axes(depthwise_separable, (14, 14, 2)) == (3,)
    assert _narrowed_axes(readme_function(), (40, 40, 3)) == (3,)
    assert _narrowed_axes(grouped_after_concat, (14, 14, 2)) == ()
    assert _narrowed_axes(attention, (12, 12, 2)) == ()


def test_narrow_option_is_checked() -> None:
    with pytest.raises(rfest_jax.provider.__globals__["OptionError"]):
        rfest_jax.provider(readme_function(), input_shape=(40, 40, 3), narrow="yes")


def test_a_depthwise_convolution_of_differing_channels_runs_in_numpy() -> None:
    fresh = lambda x: strided_depthwise_after_concat(x)  # noqa: E731  (its own trace cache)
    p = rfest_jax.provider(fresh, input_shape=(15, 15, 2))
    maps = p.gradient_maps((15, 15), "output", [(0, 0), (1, 1)])
    (trace,) = p._traces.values()
    (program,) = trace.compiled.values()
    assert isinstance(program, _NumpyMaps) and program._program is not None  # not compiled
    # By hand: the union of a 1x1 and a 'same' 3x3 reads rows r-1..r+1; the 3x3 stride-2
    # depthwise window of unit i reads rows 2i..2i+2 of it: input rows 2i-1..2i+3.
    for k, (first, last) in enumerate([(0, 3), (1, 5)]):
        rows, cols = np.nonzero(maps[k])
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (first, last, first, last)
    field = rfest.compute(strided_depthwise_after_concat, (15, 15, 2), backend="jax")
    assert (field.size, field.stride, field.padding) == ((5, 5), (2, 2), (1, 1))
