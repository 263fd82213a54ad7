"""JAX functions and Flax modules with receptive fields worked by hand from the recurrences.

Per axis, starting from r = 1, j = 1, first = 0 (first input index unit 0 sees):
``first += -p * j``; ``r += (k - 1) * d * j``; ``j *= s``; padding = -first.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.jax


@pytest.fixture(autouse=True)
def jax_backend() -> None:
    # On a machine where rfest runs from a source tree without being installed.
    if "jax" not in rfest.available_backends():
        rfest.register_backend("jax", rfest_jax.provider, replace=True)


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object]:
    return rf.size, rf.stride, rf.padding


def test_receptivefield_readme_network_linen() -> None:
    # conv5 r5; conv3 r7; pool2 r8 j2; conv3 r12; conv3 r16; pool2 r18 j4; conv3 r26; conv3 r34.
    # 96 -> 92 -> 90 -> 45 -> 43 -> 41 -> 20 -> 18 -> 16 output units.
    # Four channels per layer instead of 32..128: the geometry is the same, compiling cheaper.
    rf = rfest.compute(linen_pair(ReadmeNetLinen(width=4), (96, 96, 3)), (96, 96, 3))
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))
    assert rf.offset == (16.5, 16.5)
    assert rf.output_shape == (16, 16)


def test_receptivefield_readme_network_nnx_by_module_path() -> None:
    model = nnx_model(ReadmeNetNNX)
    rfs = rfest.compute(model, (96, 96, 3), output=["conv2", "feature_grid"])
    assert geometry(rfs["conv2"]) == ((7, 7), (1, 1), (0, 0))  # 5 + 2
    assert geometry(rfs["feature_grid"]) == ((34, 34), (4, 4), (0, 0))


def test_receptivefield_readme_network_plain_function() -> None:
    # Same layers written with lax.conv_general_dilated, jax.nn.relu, reduce_window max.
    rf = rfest.compute(readme_function(), (96, 96, 3), backend="jax")
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))
    assert rf.offset == (16.5, 16.5)


@pytest.mark.slow
def test_resnet50_torchvision_layout_every_stage_in_one_call() -> None:
    # stem conv7/2 p3: r7 j2 first-3; maxpool3/2 p1: r11 j4 first-5.
    # layer1: 3 x 3x3 at j4 -> r35 first-17.  layer2: 3x3/2 at j4 -> r43 j8, +3 x 16 -> r91.
    # layer3: 3x3/2 at j8 -> r107 j16, +5 x 32 -> r267.  layer4: 3x3/2 at j16 -> r299 j32,
    # +2 x 64 -> r427.  Every layer pads (k-1)/2, so padding = (r-1)/2.  Width 4 instead of
    # 64 keeps every kernel, stride and padding.
    pair = linen_pair(ResNet50(width=4), (224, 224, 3))
    rfs = rfest.compute(pair, (224, 224, 3), output=["layer1", "layer2", "layer3", "layer4"])
    expected = {"layer1": (35, 4), "layer2": (91, 8), "layer3": (267, 16), "layer4": (427, 32)}
    for name, (size, stride) in expected.items():
        assert geometry(rfs[name]) == ((size,) * 2, (stride,) * 2, ((size - 1) // 2,) * 2), name
    assert rfs["layer4"].output_shape == (7, 7)
    assert rfs["layer4"].grown  # 427 does not fit in 224: probed larger, same geometry
    assert rfest.compute(pair, (224, 224, 3)).is_global  # mean + dense head sees everything


def test_dilated_convolutions_plain_function() -> None:
    # k3 d2 p2: r5 first-2; k3 d2 p2: r9 first-4; k3 d4 p4: r17 first-8.
    k = [random_kernel(i, 3, 3, 2, 2) for i in range(3)]

    def net(x: jax.Array) -> jax.Array:
        x = conv(x, k[0], padding=((2, 2), (2, 2)), dilation=2)
        x = conv(x, k[1], padding=((2, 2), (2, 2)), dilation=2)
        return conv(x, k[2], padding=((4, 4), (4, 4)), dilation=4)

    assert geometry(rfest.compute(net, (40, 40, 2), backend="jax")) == ((17, 17), (1, 1), (8, 8))


def test_dilation_with_holes_in_the_support_1d() -> None:
    # One k3 d3 conv: the field {0, 3, 6} has holes; size 7, padding 0.
    kernel = random_kernel(0, 3, 1, 1)
    rf = rfest.compute(lambda x: conv(x, kernel, dilation=3), (20, 1), backend="jax")
    assert geometry(rf) == ((7,), (1,), (0,))


class NonSquare(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Conv(8, (3, 7), strides=(1, 2), padding=((1, 1), (0, 0)))(x))
        return nn.Conv(8, (5, 1), strides=(2, 1), padding=((2, 2), (0, 0)))(x)


def test_non_square_kernel_stride_and_input() -> None:
    # axis 0: k3 s1 p1 -> r3 first-1; k5 s2 p2 -> r7 first-3 j2.  40 -> 40 -> 20 units.
    # axis 1: k7 s2 p0 -> r7 j2 first0; k1 s1 p0 -> r7 j2.  57 -> 26 -> 26 units.
    rf = rfest.compute(linen_pair(NonSquare(), (40, 57, 3)), (40, 57, 3))
    assert geometry(rf) == ((7, 7), (2, 2), (3, 0))
    assert rf.output_shape == (20, 26)


class Conv1D(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(4, (5,), strides=2, padding=((1, 1),))(x)
        return nn.Conv(4, (3,), kernel_dilation=2, padding="VALID")(x)


def test_conv1d_network() -> None:
    # k5 s2 p1: r5 j2 first-1; k3 d2 p0: r5 + 2*2*2 = 13.
    rf = rfest.compute(linen_pair(Conv1D(), (50, 2)), (50, 2))
    assert geometry(rf) == ((13,), (2,), (1,))
    assert rf.offset == (5.0,)


def test_conv3d_network_plain_function() -> None:
    # axis0: k3 p1 -> r3 first-1; pool2 -> r4 j2; k3 p1 -> r8 first-3.
    # axis1: k5 s2 p2 -> r5 j2 first-2; pool2 -> r7 j4; k3 p1 -> r15 first-6.
    # axis2: k1 s2 -> r1 j2; pool2 -> r3 j4; k3 p1 -> r11 first-4.
    k1, k2 = random_kernel(1, 3, 5, 1, 1, 2), random_kernel(2, 3, 3, 3, 2, 2)

    def net(x: jax.Array) -> jax.Array:
        x = conv(x, k1, stride=(1, 2, 2), padding=((1, 1), (2, 2), (0, 0)))
        return conv(max_pool(x, 2, 2), k2, padding=((1, 1),) * 3)

    rf = rfest.compute(net, (12, 20, 24, 1), backend="jax")
    assert geometry(rf) == ((8, 15, 11), (2, 4, 4), (3, 6, 4))


def test_activations_pooling_and_softmax_written_as_functions() -> None:
    # a: k3 p1 r3 first-1; max k3 s2 p1: r5 j2 first-2; b: k3 p1: r9 first-4.  Between them
    # silu, clip, tanh * sigmoid gate, softmax over channels and leaky_relu: all pointwise.
    ka, kb = random_kernel(1, 3, 3, 1, 4), random_kernel(2, 3, 3, 4, 4)

    def net(x: jax.Array) -> jax.Array:
        x = jax.nn.relu(conv(x, ka, padding=((1, 1), (1, 1))))
        x = jnp.clip(jax.nn.silu(max_pool(x, 3, 2, padding=1)), 0, 6)
        x = jax.nn.softmax(x, axis=-1)
        x = jnp.tanh(conv(x, kb, padding=((1, 1), (1, 1)))) * jax.nn.sigmoid(x)
        return jax.nn.leaky_relu(jnp.where(x > 0.5, x, -x))

    assert geometry(rfest.compute(net, (31, 31, 1), backend="jax")) == ((9, 9), (2, 2), (4, 4))


@pytest.mark.parametrize(
    ("axis", "expected"),
    [
        ((1, 2), None),  # every output divides by a sum over the whole map: global
        (1, ((None, 5), (None, 1), (None, 1))),  # global along the rows only
        (-1, ((5, 5), (1, 1), (1, 1))),  # over the channels: pointwise
    ],
)
def test_softmax_over_spatial_axes_reaches_every_input_along_them(
    axis: object, expected: object
) -> None:
    # a: k3 p1: r3 first-1; softmax; b: k3 valid: r5 first-1. A softmax divides by a sum
    # of every input along its axes: the quotient depends on all of them (the numerator
    # alone would give 5/1/1 on every axis).
    ka, kb = random_kernel(3, 3, 3, 3, 4), random_kernel(4, 3, 3, 4, 2)

    def net(x: jax.Array) -> jax.Array:
        x = jax.nn.softmax(conv(x, ka, padding=((1, 1), (1, 1))), axis=axis)
        return conv(x, kb)

    rf = rfest.compute(net, (32, 32, 3), backend="jax")
    if expected is None:
        assert rf.is_global
    else:
        assert geometry(rf) == expected


def test_division_by_a_live_sum_but_not_by_a_norm_scale() -> None:
    # x / sum(|x|) over the columns: global along them; x / (1 + |x|) and a layer
    # norm's x * rsqrt(var) over the channels: pointwise. k3 p1 then k3 valid: 5 / 1 / 1.
    ka, kb = random_kernel(5, 3, 3, 1, 4), random_kernel(6, 3, 3, 4, 4)

    def net(x: jax.Array) -> jax.Array:
        x = conv(x, ka, padding=((1, 1), (1, 1)))
        x = x / (1 + jnp.abs(x))
        x = (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)
        x = x / jnp.abs(x).sum(axis=2, keepdims=True)
        return conv(x, kb)

    rf = rfest.compute(net, (24, 24, 1), backend="jax")
    assert geometry(rf) == ((5, None), (1, None), (1, None))


class Normalised(nn.Module):
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(4, (3, 3), padding=1)(x)
        if self.norm == "batch":  # training mode: statistics of the batch and space
            x = nn.BatchNorm(use_running_average=False)(x)
        elif self.norm == "group":
            x = nn.GroupNorm(num_groups=2)(x)
        else:
            x = nn.LayerNorm(reduction_axes=(1, 2, 3))(x)
        return nn.Conv(4, (3, 3), padding=1)(nn.relu(x))


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_normalisation_acts_as_identity(norm: str) -> None:
    # k3 p1 twice: r5 padding 2; the norm in between is identity once linearized.
    rf = rfest.compute(linen_pair(Normalised(norm), (20, 20, 1)), (20, 20, 1))
    assert geometry(rf) == ((5, 5), (1, 1), (2, 2))


def test_nnx_module_in_train_mode_with_batch_norm_and_dropout() -> None:
    rf = rfest.compute(nnx_model(NNXConvBatchNormDropout), (20, 20, 1))
    assert geometry(rf) == ((5, 5), (1, 1), (2, 2))


def test_global_pooling_is_global() -> None:
    kernel = random_kernel(0, 3, 3, 3, 4)
    mean_head = rfest.compute(
        lambda x: conv(x, kernel).mean(axis=(1, 2)), (32, 32, 3), backend="jax"
    )
    max_head = rfest.compute(
        lambda x: conv(x, kernel).max(axis=(1, 2), keepdims=True), (32, 32, 3), backend="jax"
    )
    assert mean_head.is_global and mean_head.size is None
    assert max_head.is_global


def test_squeeze_excite_and_gated_activation_are_global() -> None:
    # y * sigmoid(dense(mean(y))): with a zero probe input the gate path would be invisible.
    kernel, dense = random_kernel(0, 3, 3, 2, 4), random_kernel(1, 4, 4)

    def squeeze_excite(x: jax.Array) -> jax.Array:
        y = conv(x, kernel, padding=((1, 1), (1, 1)))
        gate = jax.nn.sigmoid(y.mean(axis=(1, 2), keepdims=True) @ dense)
        return y * gate

    assert rfest.compute(squeeze_excite, (24, 24, 2), backend="jax", max_input_size=256).is_global


class Gated(nnx.Module):
    """tanh(a) * sigmoid(b) with a k3 p1 and b k5 p2: field of the wider, r5 padding 2."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.a = nnx.Conv(2, 4, (3, 3), padding=1, rngs=rngs)
        self.b = nnx.Conv(2, 4, (5, 5), padding=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.a(x)) * jax.nn.sigmoid(self.b(x))


def test_gated_activation_sees_both_paths() -> None:
    rf = rfest.compute(nnx_model(Gated), (24, 24, 2))
    assert geometry(rf) == ((5, 5), (1, 1), (2, 2))


def test_field_larger_than_the_input() -> None:
    # four k3 s2 p1: r = 1 + 2 * (1 + 2 + 4 + 8) = 31, j16, padding 15; input only 12.
    kernels = [random_kernel(i, 3, 3, 1, 1) for i in range(4)]

    def net(x: jax.Array) -> jax.Array:
        for kernel in kernels:
            x = conv(x, kernel, stride=2, padding=((1, 1), (1, 1)))
        return x

    rf = rfest.compute(net, (12, 12, 1), backend="jax")
    assert geometry(rf) == ((31, 31), (16, 16), (15, 15))
    assert rf.grown and all((p - 12) % 16 == 0 for p in rf.probe_shape)


def test_pytree_outputs_by_key_and_index() -> None:
    k1, k2 = random_kernel(1, 3, 3, 1, 2), random_kernel(2, 5, 5, 2, 2)

    def net(x: jax.Array) -> dict[str, object]:
        a = conv(x, k1)
        return {"features": (a, conv(a, k2)), "pooled": a.mean(axis=(1, 2))}

    rfs = rfest.compute(net, (20, 20, 1), backend="jax", output=["features/0", "features/1"])
    assert geometry(rfs["features/0"]) == ((3, 3), (1, 1), (0, 0))
    assert geometry(rfs["features/1"]) == ((7, 7), (1, 1), (0, 0))  # 3 + 4
    with pytest.raises(rfest.OutputNotFoundError, match="pytree"):
        rfest.compute(net, (20, 20, 1), backend="jax")


class Sown(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(2, (3, 3), padding="VALID", name="stem")(x)
        self.sow("intermediates", "after_stem", x)
        return nn.Conv(2, (3, 3), strides=2, padding="VALID", name="head")(x)


def test_linen_module_paths_and_sown_values() -> None:
    # stem k3: r3; head k3 s2: r5 j2.
    pair = linen_pair(Sown(), (21, 21, 1))
    rfs = rfest.compute(pair, (21, 21, 1), output=["stem", "after_stem", "head"])
    assert geometry(rfs["stem"]) == geometry(rfs["after_stem"]) == ((3, 3), (1, 1), (0, 0))
    assert geometry(rfs["head"]) == ((5, 5), (2, 2), (0, 0))


def test_layer_names_of_each_model_form() -> None:
    p = rfest_jax.provider(linen_pair(Sown(), (21, 21, 1)), input_shape=(21, 21, 1))
    assert set(p.layer_names()) == {"stem", "after_stem", "head"}
    nnx_names = rfest_jax.provider(nnx_model(ReadmeNetNNX), input_shape=(96, 96, 3))
    assert nnx_names.layer_names()[:2] == ("conv1", "conv2")
    assert nnx_names.layer_names()[-1] == "feature_grid"
    assert isinstance(p, rfest.LayerListingProvider)
    assert isinstance(p, rfest.InputGradientProvider)


def test_input_gradients_of_the_real_model_are_signed_and_channels_first() -> None:
    # y = conv(x, K) 'VALID': d sum_o y[n, 1, 1, o] / d x[n, i, j, c] = sum_o K[i, j, c, o]
    # for i, j in 0..2, zero elsewhere.
    kernel = random_kernel(3, 3, 3, 2, 4)
    p = rfest_jax.provider(lambda x: conv(x, kernel), input_shape=(6, 6, 2), linearize=False)
    inputs = np.random.default_rng(0).random((2, 6, 6, 2))
    grads = p.input_gradients(inputs, "output", (1, 1))
    assert grads.shape == (2, 2, 6, 6) and grads.dtype == np.float64
    expected = np.zeros((2, 6, 6))
    expected[:, 1:4, 1:4] = np.asarray(kernel, dtype=np.float64).sum(axis=-1).transpose(2, 0, 1)
    np.testing.assert_allclose(grads[0], expected, rtol=1e-6)
    np.testing.assert_allclose(grads[1], expected, rtol=1e-6)
    assert (grads < 0).any()  # signed


def test_real_model_without_linearization_and_in_float32() -> None:
    # k5 p2: r5 first-2; k3 s2 p1: r7 first-3 j2.
    k1, k2 = random_kernel(1, 5, 5, 1, 2), random_kernel(2, 3, 3, 2, 2)

    def net(x: jax.Array) -> jax.Array:
        x = conv(x, k1, padding=((2, 2), (2, 2)))
        return conv(x, k2, stride=2, padding=((1, 1), (1, 1)))

    for options in ({"linearize": False}, {"dtype": "float32"}):
        rf = rfest.compute(net, (30, 30, 1), backend="jax", **options)
        assert geometry(rf) == ((7, 7), (2, 2), (3, 3)), options
