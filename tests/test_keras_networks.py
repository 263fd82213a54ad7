"""Keras networks with receptive fields worked by hand, on whichever framework runs Keras.

``tests/test_keras_backends.py`` reruns this module with KERAS_BACKEND=jax and =torch.
Recurrences and TensorFlow 'same' padding: see ``tests/keras_models.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras import layers as L  # noqa: E402

import rfest  # noqa: E402
from keras_models import SmallNet, receptivefield_readme_net  # noqa: E402
from rfest_keras._autodiff import to_numpy  # noqa: E402

pytestmark = pytest.mark.keras


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object]:
    return rf.size, rf.stride, rf.padding


def test_receptivefield_readme_network_with_relu_and_max_pool() -> None:
    # keras_models.receptivefield_readme_net: 34 / 4 / 0, offset (34 - 1) / 2 = 16.5.
    rf = rfest.compute(receptivefield_readme_net(), output="feature_grid")
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))
    assert rf.offset == (16.5, 16.5)
    assert rf.output_shape == (16, 16)


def test_build_function_form() -> None:
    rf = rfest.compute(receptivefield_readme_net, (96, 96, 3), backend="keras")
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))


def test_vgg16_every_pool_in_one_call() -> None:
    # published_rf_tf_slim.csv, vgg_16 at 224: pool3 44/8/18, pool4 100/16/42,
    # pool5 212/32/90 (Keras' VGG16 has TF-slim's layout: 3x3 'same' convs, 2x2 pools).
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    rfs = rfest.compute(model, output=["block3_pool", "block4_pool", "block5_pool"])
    expected = {
        "block3_pool": (44, 8, 18),
        "block4_pool": (100, 16, 42),
        "block5_pool": (212, 32, 90),
    }
    for name, (size, stride, padding) in expected.items():
        assert geometry(rfs[name]) == ((size,) * 2, (stride,) * 2, (padding,) * 2), name


def test_resnet50_keras_layout() -> None:
    # conv1_pad 3 + conv 7/2: r7 j2 first-3; pool1_pad 1 + pool 3/2: r11 j4 first-5.
    # Each block adds one 3x3 'same' (pad 1) at the stage's stride; the stride sits on the
    # first 1x1 conv. conv2 (j4, 3 blocks): r35 first-17; conv3 (j8, 4): r99 first-49;
    # conv4 (j16, 6): r291 first-145; conv5 (j32, 3): r483 first-241.
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    rf = rfest.compute(model, output="conv5_block3_out")
    assert geometry(rf) == ((483, 483), (32, 32), (241, 241))
    assert rf.output_shape == (7, 7) and rf.grown


def test_mobilenet() -> None:
    # published_rf_tf_slim.csv, mobilenet_v1 at 224, Conv2d_13_pointwise: 315/32/126 (Keras
    # pads stride-2 depthwise convs ((0, 1), (0, 1)) like 'same' at an even size).
    model = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(224, 224, 3))
    rf = rfest.compute(model, output="conv_pw_13_relu")
    assert geometry(rf) == ((315, 315), (32, 32), (126, 126))


def test_inception_v3() -> None:
    # Issue 4 table: mixed10 at 299: 1311 / 32 / 618 (slim inception_v3 Mixed_7c has the
    # same 1311 / 32; Keras pads its stride-2 layers 'valid').
    model = keras.applications.InceptionV3(
        weights=None, include_top=False, input_shape=(299, 299, 3)
    )
    rf = rfest.compute(model, output="mixed10")
    assert geometry(rf) == ((1311, 1311), (32, 32), (618, 618))


def test_dilated_convolutions() -> None:
    # valid k3 d2: r5; k3 d2: r9; k3 d4: r17; no padding.
    net = keras.Sequential(
        [
            keras.Input((None, None, 2)),
            L.Conv2D(4, 3, dilation_rate=2),
            L.Conv2D(4, 3, dilation_rate=2),
            L.Conv2D(4, 3, dilation_rate=4),
        ]
    )
    assert geometry(rfest.compute(net, (40, 40, 2))) == ((17, 17), (1, 1), (0, 0))


@pytest.mark.parametrize(("n", "padding"), [(32, 0), (33, 3)])
def test_same_padding_with_stride_2_depends_on_the_size(n: int, padding: int) -> None:
    # Two k3 s2 'same': r3 then r7, j4. n=32: out 16, pad_total 30+3-32=1, before 0; then
    # out 8, pad_total 14+3-16=1, before 0 -> padding 0. n=33: out 17, pad_total 2, before
    # 1; then 17 -> out 9, pad_total 16+3-17=2, before 1 -> padding 1 + 1*2 = 3.
    net = keras.Sequential(
        [keras.Input((None, None, 1))]
        + [L.Conv2D(2, 3, strides=2, padding="same") for _ in range(2)]
    )
    rf = rfest.compute(net, (n, n, 1))
    assert geometry(rf) == ((7, 7), (4, 4), (padding, padding))


def test_depthwise_separable_zero_padding_and_cropping() -> None:
    # ZeroPadding ((3,3),(1,1)): first -3 / -1; depthwise k5: r5; separable k3 d2: r9;
    # Cropping ((1,0),(0,2)) drops output unit 0 on axis 0: first +1 -> -2 / -1.
    net = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            L.ZeroPadding2D(((3, 3), (1, 1))),
            L.DepthwiseConv2D(5, activation="relu"),
            L.SeparableConv2D(4, 3, dilation_rate=2),
            L.Cropping2D(((1, 0), (0, 2))),
        ]
    )
    assert geometry(rfest.compute(net, (30, 30, 3))) == ((9, 9), (1, 1), (2, 1))


def test_conv1d_network() -> None:
    # ZeroPadding1D 1: first -1; k5 s2: r5 j2; k3 d2: r5 + 2*2*2 = 13; offset 6 - 1 = 5.
    net = keras.Sequential(
        [
            keras.Input((None, 2)),
            L.ZeroPadding1D(1),
            L.Conv1D(4, 5, strides=2),
            L.Conv1D(4, 3, dilation_rate=2),
        ]
    )
    rf = rfest.compute(net, (50, 2))
    assert geometry(rf) == ((13,), (2,), (1,))
    assert rf.offset == (5.0,)


def test_conv3d_network() -> None:
    # axis0: pad1, k3 -> r3 first-1; pool2 -> r4 j2; k3 'same' (pad 1) -> r8 first-3.
    # axis1: pad2, k5 s2 -> r5 j2 first-2; pool2 -> r7 j4; k3 same -> r15 first-6.
    # axis2: k1 s2 -> r1 j2; pool2 -> r3 j4; k3 same -> r11 first-4.
    net = keras.Sequential(
        [
            keras.Input((None, None, None, 1)),
            L.ZeroPadding3D((1, 2, 0)),
            L.Conv3D(2, (3, 5, 1), strides=(1, 2, 2)),
            L.MaxPooling3D(2),
            L.Conv3D(2, 3, padding="same"),
        ]
    )
    rf = rfest.compute(net, (12, 20, 24, 1))
    assert geometry(rf) == ((8, 15, 11), (2, 4, 4), (3, 6, 4))


def branches() -> keras.Model:
    """stem k3 same (r3 first-1); concat(1x1, 5x5 same) -> r7 first-3;
    down k3 s2 valid on it -> r9 first-3 j2; skip k3 s2 valid on stem -> r5 first-1;
    gate avg-pool 3/2 on stem -> r5 first-1; Multiply(Add(down, skip), gate): r9 pad 3."""
    x = inputs = keras.Input((None, None, 3))
    stem = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(x)
    wide = L.Conv2D(4, 5, padding="same", activation="gelu", name="wide")(stem)
    mixed = L.Concatenate(name="mixed")([L.Conv2D(4, 1)(stem), wide])
    down = L.Conv2D(4, 3, strides=2, name="down")(mixed)
    skip = L.Conv2D(4, 3, strides=2, name="skip")(stem)
    gate = L.AveragePooling2D(3, strides=2)(stem)
    out = L.Multiply(name="out")([L.Add()([down, skip]), gate])
    return keras.Model(inputs, out)


def test_concatenate_add_multiply() -> None:
    rfs = rfest.compute(branches(), (33, 33, 3), output=["out", "wide", "mixed"])
    assert geometry(rfs["out"]) == ((9, 9), (2, 2), (3, 3))
    assert geometry(rfs["wide"]) == ((7, 7), (1, 1), (3, 3))
    assert geometry(rfs["mixed"]) == ((7, 7), (1, 1), (3, 3))


def test_narrowing_keeps_the_field() -> None:
    wide = rfest.compute(branches(), (33, 33, 3), output="out", narrow=False)
    assert geometry(wide) == ((9, 9), (2, 2), (3, 3))


def test_squeeze_excite_is_global() -> None:
    # The gate sees the whole input through global pooling; Reshape keeps full width.
    x = inputs = keras.Input((None, None, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    gate = L.GlobalAveragePooling2D()(x)
    gate = L.Dense(2, activation="relu")(gate)
    gate = L.Dense(8, activation="sigmoid")(gate)
    gate = L.Reshape((1, 1, 8))(gate)
    out = L.Multiply(name="se")([x, gate])
    rf = rfest.compute(keras.Model(inputs, out), (24, 24, 3), output="se")
    assert rf.is_global and rf.size is None


def test_global_pooling_is_global() -> None:
    net = keras.Sequential(
        [keras.Input((None, None, 3)), L.Conv2D(4, 3), L.GlobalMaxPooling2D(name="pool")]
    )
    assert rfest.compute(net, (20, 20, 3)).is_global


def test_multi_input_model_needs_input() -> None:
    # image k3 valid, concatenated with a 1-channel map, then k3 valid: r5 padding 0.
    image = keras.Input((None, None, 3), name="image")
    mask = keras.Input((None, None, 1), name="mask")
    x = L.Conv2D(4, 3, padding="same")(image)
    x = L.Concatenate()([x, mask])
    x = L.Conv2D(4, 3, name="head")(x)
    model = keras.Model([image, mask], x)
    with pytest.raises(rfest.InputShapeError, match="input="):
        rfest.compute(model, (20, 20, 3))
    rf = rfest.compute(model, (20, 20, 3), input="image")
    assert geometry(rf) == ((5, 5), (1, 1), (1, 1))  # same k3 pads 1: first -1, r3 + 2
    rf = rfest.compute(model, (20, 20, 1), input="mask")
    assert geometry(rf) == ((3, 3), (1, 1), (0, 0))


def test_siamese_towers_with_fixed_inputs_grow_together() -> None:
    # One tower (k3, pool 2, k3; r 3 + 1 + 2 * 2 = 8, stride 2) applied to two fixed-size
    # inputs whose outputs are subtracted: the field outgrows 32, so the probe grows past
    # the declared size and the twin input must follow it or the branches cannot meet.
    tower = keras.Sequential(
        [keras.Input((32, 32, 1)), L.Conv2D(2, 3), L.MaxPooling2D(), L.Conv2D(2, 3)], name="tower"
    )
    left, right = keras.Input((32, 32, 1), name="left"), keras.Input((32, 32, 1), name="right")
    model = keras.Model([left, right], L.Subtract(name="diff")([tower(left), tower(right)]))
    before = [to_numpy(v) for v in model.weights]  # v.numpy() warns on JAX and torch
    rf = rfest.compute(model, input="left", output="diff", max_input_size=64)
    assert geometry(rf) == ((8, 8), (2, 2), (0, 0))
    assert all(np.array_equal(a, to_numpy(v)) for a, v in zip(before, model.weights, strict=True))


def test_fixed_size_subclassed_model_is_measured_at_its_size() -> None:
    # A Dense head fixes the input at 12 x 12 and the model has no config to rebuild from:
    # a k7 'same' convolution (field 7, padding 3) fits at 12, so it is measured there.
    class FixedSize(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.conv = L.Conv2D(2, 7, padding="same", name="conv")
            self.flat = L.Flatten()
            self.dense = L.Dense(2)

        def call(self, x: object) -> object:
            return self.dense(self.flat(self.conv(x)))

    fixed = FixedSize()
    fixed(keras.ops.ones((1, 12, 12, 1)))
    rf = rfest.compute(fixed, (12, 12, 1), backend="keras", output="conv")
    assert geometry(rf) == ((7, 7), (1, 1), (3, 3))


def test_subclassed_model() -> None:
    rfs = rfest.compute(SmallNet(), (20, 20, 3), backend="keras", output=["conv1", "conv2"])
    assert geometry(rfs["conv1"]) == ((3, 3), (1, 1), (0, 0))
    assert geometry(rfs["conv2"]) == ((8, 8), (2, 2), (0, 0))


def test_fixed_size_model_is_rebuilt_at_each_probe_size() -> None:
    # Flatten + Dense fix the input size; the conv field is 3 + 2 * 2 = 7 (k3 s2, k3).
    x = inputs = keras.Input((17, 17, 1))  # k3 s2 on 17 reaches pixel 16: all seen
    x = L.Conv2D(2, 3, strides=2, activation="relu")(x)
    x = L.Conv2D(2, 3, name="features")(x)
    x = L.Dense(3)(L.Flatten()(x))
    model = keras.Model(inputs, x)
    assert geometry(rfest.compute(model, output="features")) == ((7, 7), (2, 2), (0, 0))
    assert rfest.compute(model).is_global


class _Doubled(L.Layer):
    """A custom layer: the copy cannot narrow what it does not know, so the model is
    measured live, at full width."""

    def call(self, x: object) -> object:
        return x * 2.0


def _ops_graph_model() -> keras.Model:
    """Keras ops applied to symbolic tensors (graph nodes that are not layers), a custom
    layer, and a 1x1 stride-2 convolution with 8 channels (whose float32 kernel gradient
    aborts TensorFlow 2.21 with oneDNN, the default on x86)."""
    inp = keras.Input((64, 64, 3))
    a = keras.ops.relu(L.Conv2D(8, 3, padding="same")(inp))
    b = L.Conv2D(8, 5, strides=2, padding="same")(a)
    c = L.Conv2D(8, 1, strides=2)(_Doubled()(a))
    s = keras.ops.maximum(b + c, 0.0)
    return keras.Model(inp, L.Conv2D(4, 3, padding="same", name="out")(s))


def test_keras_ops_nodes_and_a_strided_1x1_conv() -> None:
    # a: 3 'same' -> r3 j1 p1. b: 5/2 'same' at 64, TF pads 3 (1 before): r 3+4 = 7, j2,
    # p 1+1 = 2. c: 1/2 'valid': r3 p1, inside b's field. out: 3 'same' at j2: r 7+2*2 = 11,
    # p 2+2 = 4.
    rf = rfest.compute(_ops_graph_model(), output="out")
    assert geometry(rf) == ((11, 11), (2, 2), (4, 4))


def test_tensorflow_computes_no_kernel_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's gradient registry")
    import tensorflow as tf
    from tensorflow.python.ops import gen_nn_ops

    calls = []
    original = gen_nn_ops.conv2d_backprop_filter

    def spy(*args: object, **kwargs: object) -> object:
        if tf.executing_eagerly():  # a compiled program prunes what it does not return
            calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(gen_nn_ops, "conv2d_backprop_filter", spy)
    model = _ops_graph_model()
    rf = rfest.compute(model, output="out")
    assert geometry(rf) == ((11, 11), (2, 2), (4, 4))
    assert calls == []
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import nn_grad

    assert ops._gradient_registry.lookup("Conv2D") is nn_grad._Conv2DGrad  # TensorFlow's own


def test_no_float32_scout_where_tensorflow_runs_onednn() -> None:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("oneDNN is TensorFlow's")
    from rfest_keras._provider import KerasGradientProvider
    from rfest_keras._tf_quirks import onednn_active

    provider = KerasGradientProvider(_ops_graph_model(), output="out")
    # oneDNN has no float64 kernels: float64 passes never reach it.
    assert provider.float32_scout is not onednn_active()


def test_sequential_without_input_is_measured_at_the_given_size() -> None:
    # 3 valid, pool 2, 3 valid: r 3, 4 (j2), 4+2*2 = 8; no padding anywhere.
    model = keras.Sequential(
        [L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(8, 3, name="out")]
    )
    rf = rfest.compute(model, (64, 64, 3), output="out")
    assert geometry(rf) == ((8, 8), (2, 2), (0, 0))
    assert not model.built and not model.weights  # the user's model is left unbuilt
    with pytest.raises(rfest.InputShapeError, match="without an Input"):
        rfest.compute(model, output="out")
