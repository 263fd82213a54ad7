"""Keras models as users write them (QA round 6), each field worked by hand, left untouched.

Per axis, unit k of a tensor sees input ``[lo + k*j, hi + k*j]``: size ``hi - lo + 1``,
stride j, padding ``-lo``. TensorFlow 'same' with stride s, kernel k, dilation d on size n:
out = ceil(n / s), total = max((out - 1) * s + (k - 1) * d + 1 - n, 0), before = total // 2.
The cases other tests already hold (channels-first refusal, attention over a fixed token
grid, normalization layers alone, a frozen backbone behind augmentation) are not repeated.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import rfest  # noqa: E402
from decoder_oracle import check_every_unit  # noqa: E402
from keras_models import assert_untouched, state  # noqa: E402

pytestmark = pytest.mark.keras


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object]:
    return rf.size, rf.stride, rf.padding


def fpn_bilinear() -> keras.Model:
    """c1 k3 s2 'same' at 64 (out 32, total 1, before 0): unit k sees [2k, 2k+2].
    c2 k3 s2 'same' at 32 (before 0): unit m sees c1[2m..2m+2] = [4m, 4m+6].
    Bilinear x2 (half-pixel, src = m -/+ 0.25): up 2m <- c2{m-1, m} = [4m-4, 4m+6];
    up 2m+1 <- c2{m, m+1} = [4m, 4m+10]. The lateral 1x1 on c1 (unit u: [2u, 2u+2]) lies
    inside both. smooth k3 'same' s1 (pad 1): unit 2m <- p{2m-1, 2m, 2m+1} = [4m-4, 4m+10];
    unit 2m+1 <- p{2m, 2m+1, 2m+2} = [4m-4, 4m+10]. Period 2, step 4, both phases
    size 15 at start -4 (consecutive units share a box: not a uniform stride)."""
    inputs = keras.Input((64, 64, 3))
    c1 = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    c2 = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(c1)
    up = L.UpSampling2D(2, interpolation="bilinear", name="up")(L.Conv2D(8, 1, name="red")(c2))
    p = L.Add(name="p")([up, L.Conv2D(8, 1, name="lat")(c1)])
    return keras.Model(inputs, L.Conv2D(8, 3, padding="same", name="smooth")(p))


@contextlib.contextmanager
def _x64() -> Iterator[None]:
    """JAX computes in float64 only with x64 enabled; the other frameworks always can."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


def _positive_float64_forward(build: Any, channels: int) -> Any:
    """The oracle's forward: a float64 copy with kernels 1 / fan_in (biases stay zero)."""
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        with _x64():
            model = build()
            for weight in model.weights:
                if weight.path.endswith("kernel"):
                    shape = tuple(weight.shape)
                    weight.assign(np.full(shape, 1.0 / np.prod(shape[:-1])))
    finally:
        keras.config.set_floatx(floatx)

    def forward(x: np.ndarray) -> np.ndarray:
        inputs = np.broadcast_to(x[..., None], (*x.shape, channels)).astype("float64")
        with _x64():
            out = model(inputs, training=False)
        if keras.backend.backend() == "torch":
            out = out.detach().cpu()  # np.asarray(torch tensor) warns under NumPy 2
        elif keras.backend.backend() == "tensorflow":
            out = out.numpy()
        return np.asarray(out, dtype=np.float64).sum(axis=-1)

    return forward


def test_fpn_with_bilinear_upsampling_and_a_lateral_add() -> None:
    model = fpn_bilinear()
    before = state(model)
    with pytest.warns(rfest.NonUniformWarning, match="differ"):
        rf = rfest.compute(model, backend="keras")
    assert not rf.uniform
    assert rf.period == (2, 2) and rf.period_step == (4, 4)
    phases = (rfest.Phase(15, -4), rfest.Phase(15, -4))
    assert rf.phases == (phases, phases)
    assert rf.box((21, 20)) == ((36, 51), (36, 51))  # m = 10: [4m-4, 4m+10] on both axes
    # Every unit, borders too, against the brute-force oracle (no rfest inside).
    check_every_unit(rf, _positive_float64_forward(fpn_bilinear, 3))
    assert_untouched(before, model)


def two_inputs() -> keras.Model:
    image = keras.Input((64, 64, 3), name="image")
    mask = keras.Input((64, 64, 1), name="mask")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(image)
    m = L.Conv2D(1, 7, padding="same", activation="sigmoid")(mask)
    x = L.Multiply()([x, m])
    return keras.Model([image, mask], L.Conv2D(8, 3, strides=2, padding="same", name="out")(x))


def test_an_image_gated_by_a_mask_measured_from_each_input() -> None:
    """The last conv is k3 s2 'same' at 64 (before 0): unit k <- x[2k..2k+2].
    From the image: k3 'same' (pad 1), x unit i sees [i-1, i+1]: [2k-1, 2k+3], 5 / 2 / 1.
    From the mask: k7 'same' (pad 3), [i-3, i+3], through the gate: [2k-3, 2k+5], 9 / 2 / 3."""
    model = two_inputs()
    before = state(model)
    rf = rfest.compute(model, backend="keras", input="image")
    assert geometry(rf) == ((5, 5), (2, 2), (1, 1))
    rf = rfest.compute(model, backend="keras", input="mask")
    assert geometry(rf) == ((9, 9), (2, 2), (3, 3))
    assert_untouched(before, model)


def test_a_trained_model_saved_and_loaded(tmp_path: Any) -> None:
    """conv k3 s2 valid: [0, 2] j2; BN, ReLU; k3 dilation 2 valid (extent 5 units):
    [0, 10] j2; sizes 64 -> 31 -> 27. feat = max pool 3 s2 'same' at 27: out 14,
    total 13*2 + 3 - 27 = 2, before 1: unit p sees units 2p-1 .. 2p+1:
    [2(2p-1), 2(2p+1) + 10] = [4p-2, 4p+12]: 15 / 4 / 2. Saved as .keras under tmp_path."""
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.Conv2D(16, 3, dilation_rate=2, activation="relu")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="feat")(x)
    trained = keras.Model(inputs, L.Dense(4, name="logits")(L.GlobalAveragePooling2D()(x)))
    trained.compile("adam", "mse")
    rng = np.random.default_rng(0)
    data = rng.random((4, 64, 64, 3), dtype="float32"), rng.random((4, 4), dtype="float32")
    trained.fit(*data, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    with warnings.catch_warnings():  # Keras' TensorFlow saving under NumPy 2, not rfest's
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        trained.save(path)
    model = keras.models.load_model(path)
    before = state(model)
    rf = rfest.compute(model, backend="keras", output="feat")
    assert geometry(rf) == ((15, 15), (4, 4), (2, 2))
    assert_untouched(before, model)


def test_under_the_global_mixed_float16_policy() -> None:
    """conv k5 valid: [0, 4]; avg pool 2: [0, 5] j2; k3 'same' s1 (pad 1): units u-1..u+1:
    [-2, 7]: 10 / 2 / 2. The policy is the user's global state: it is put back here."""
    policy = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((64, 64, 3))
        x = L.Conv2D(8, 5, activation="relu")(inputs)
        x = L.Conv2D(8, 3, padding="same")(L.AveragePooling2D(2)(x))
        model = keras.Model(inputs, L.Activation("linear", dtype="float32", name="out")(x))
        before = state(model)
        rf = rfest.compute(model, backend="keras")
        assert geometry(rf) == ((10, 10), (2, 2), (2, 2))
        assert keras.config.dtype_policy().name == "mixed_float16"
        assert_untouched(before, model)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def test_dropout_noise_and_normalization_layers_in_one_network() -> None:
    """Noise, dropout and normalization layers are identity (linearized): conv k3: 3;
    k3: 5; k3 s2 valid: 7 j2; k3 at j2: 7 + 2 * 2 = 11: 11 / 2 / 0."""
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(8, 3)(L.GaussianNoise(0.1)(inputs))
    x = L.SpatialDropout2D(0.2)(L.LayerNormalization()(x))
    x = L.GaussianDropout(0.1)(L.Conv2D(8, 3)(x))
    x = L.GroupNormalization(groups=4)(L.Conv2D(8, 3, strides=2)(x))
    x = L.Conv2D(8, 3)(L.Dropout(0.5)(x))
    model = keras.Model(inputs, L.UnitNormalization(name="out")(x))
    before = state(model)
    assert geometry(rfest.compute(model, backend="keras")) == ((11, 11), (2, 2), (0, 0))
    assert_untouched(before, model)


def test_parametric_and_smooth_activations() -> None:
    """PReLU, LeakyReLU, ELU, softplus, gelu, swish are pointwise: conv k3: 3; k3: 5;
    k3 s2: 7 j2; depthwise k3 at j2: 11; 1x1: 11 / 2 / 0."""
    inputs = keras.Input((64, 64, 3))
    x = L.PReLU(shared_axes=[1, 2])(L.Conv2D(8, 3)(inputs))
    x = L.LeakyReLU(negative_slope=0.1)(L.Conv2D(8, 3)(x))
    x = L.ELU()(L.Conv2D(8, 3, strides=2)(x))
    x = L.DepthwiseConv2D(3, activation="softplus")(x)
    x = L.Conv2D(8, 1, activation="gelu")(x)
    model = keras.Model(inputs, L.Activation("swish", name="out")(x))
    before = state(model)
    assert geometry(rfest.compute(model, backend="keras")) == ((11, 11), (2, 2), (0, 0))
    assert_untouched(before, model)


def test_asymmetric_zero_padding_before_a_strided_convolution() -> None:
    """ZeroPadding2D(((1, 0), (2, 1))), k3 s2 valid, k3 valid. Rows: 1 before, so unit k
    sees padded [2k, 2k+2] = input [2k-1, 2k+1]; then k3 at j2: [-1, 5]: 7 / 2 / 1.
    Columns: 2 before: [2k-2, 2k]; then [-2, 4]: 7 / 2 / 2 (the pads after play no part)."""
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(8, 3, strides=2)(L.ZeroPadding2D(((1, 0), (2, 1)))(inputs))
    model = keras.Model(inputs, L.Conv2D(8, 3, name="out")(x))
    before = state(model)
    assert geometry(rfest.compute(model, backend="keras")) == ((7, 7), (2, 2), (1, 2))
    assert_untouched(before, model)


@pytest.mark.parametrize(
    ("declared", "input_shape", "padding"),
    [
        ((65, 64, 3), None, (3, 0)),
        ((63, 66, 3), None, (1, 2)),
        ((None, None, 3), (65, 64, 3), (3, 0)),
    ],
    ids=["65x64", "63x66", "free-size-at-65x64"],
)
def test_strided_same_padding_differs_per_axis(
    declared: tuple[int | None, ...], input_shape: tuple[int, ...] | None, padding: tuple[int, int]
) -> None:
    """Two k3 s2 'same' convolutions; each axis pads by its own size's parity.
    65: out 33, total 32*2 + 3 - 65 = 2, before 1: [-1, 1] j2; 33: out 17, total 2,
    before 1: units 2m-1..2m+1: [-3, 3]: 7 / 4 / 3.
    64: out 32, total 1, before 0: [0, 2]; 32: out 16, total 1, before 0: [0, 6]: 7 / 4 / 0.
    63: out 32, total 31*2 + 3 - 63 = 2, before 1: [-1, 1]; 32: before 0: [-1, 5]: 7 / 4 / 1.
    66: out 33, total 32*2 + 3 - 66 = 1, before 0: [0, 2]; 33: before 1: [-2, 4]: 7 / 4 / 2."""
    inputs = keras.Input(declared)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, L.Conv2D(8, 3, strides=2, padding="same", name="out")(x))
    before = state(model)
    rf = rfest.compute(model, input_shape, backend="keras")
    assert geometry(rf) == ((7, 7), (4, 4), padding)
    assert_untouched(before, model)


def test_dilated_same_convolutions_after_a_stride() -> None:
    """k3 s2 valid: [0, 2] j2; k3 dilation 2 'same' (extent 5, before 2): units u-2, u, u+2:
    [-4, 6]; k3 dilation 4 'same' (extent 9, before 4): units v-4, v, v+4: [-12, 14];
    max pool 2 s2: units 2w, 2w+1: [-12, 16] j4: 29 / 4 / 12."""
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = L.Conv2D(8, 3, dilation_rate=2, padding="same", activation="relu")(x)
    x = L.Conv2D(8, 3, dilation_rate=4, padding="same", activation="relu")(x)
    model = keras.Model(inputs, L.MaxPooling2D(2, name="out")(x))
    before = state(model)
    assert geometry(rfest.compute(model, backend="keras")) == ((29, 29), (4, 4), (12, 12))
    assert_untouched(before, model)


def test_efficientnetv2_with_its_preprocessing_before_the_first_gate() -> None:
    """EfficientNetV2B0 at 64 with include_preprocessing (Rescaling, Normalization:
    pointwise). stem_conv k3 s2 'same' at 64 (before 0): [0, 2] j2: 3 / 2 / 0.
    block1a (fused, expand 1): project_conv k3 s1 'same': [-2, 4]: 7 / 2 / 2.
    block2a (fused, expand 4): expand_conv k3 s2 'same' at 32 (before 0): units 2m..2m+2:
    [-2, 8] j4: 11 / 4 / 2. Squeeze-excite starts at block4: none of these is global."""
    model = keras.applications.EfficientNetV2B0(
        weights=None, include_top=False, input_shape=(64, 64, 3), include_preprocessing=True
    )
    before = state(model)
    names = ["stem_activation", "block1a_project_activation", "block2a_expand_activation"]
    rfs = rfest.compute(model, backend="keras", output=names)
    assert geometry(rfs["stem_activation"]) == ((3, 3), (2, 2), (0, 0))
    assert geometry(rfs["block1a_project_activation"]) == ((7, 7), (2, 2), (2, 2))
    assert geometry(rfs["block2a_expand_activation"]) == ((11, 11), (4, 4), (2, 2))
    assert_untouched(before, model)


class ResBlock(L.Layer):
    """x + BN(conv k3 'same'(conv k3 'same'(x))), relu: two units either way."""

    def __init__(self, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.c1 = L.Conv2D(width, 3, padding="same", activation="relu")
        self.c2 = L.Conv2D(width, 3, padding="same")
        self.bn = L.BatchNormalization()

    def call(self, x: Any, training: bool = False) -> Any:
        return keras.activations.relu(x + self.bn(self.c2(self.c1(x)), training=training))


class LoopNet(keras.Model):
    """A stem, a Python loop over a list of residual blocks, a 1x1 head."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stem = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")
        self.blocks = [ResBlock(16, name=f"res{i}") for i in range(3)]
        self.head = L.Conv2D(4, 1)

    def call(self, x: Any, training: bool = False) -> Any:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(x)


def test_subclassed_model_looping_over_residual_block_layers() -> None:
    """stem k3 s2 'same' at 64 (before 0): [0, 2] j2; three blocks of two k3 'same' add
    6 * 2 = 12 pixels each side (the skip lies inside): [-12, 14]; 1x1: 27 / 2 / 12."""
    model = LoopNet()
    model(np.zeros((1, 64, 64, 3), "float32"))  # built, as a trained model is
    before = state(model)
    rf = rfest.compute(model, (64, 64, 3), backend="keras")
    assert geometry(rf) == ((27, 27), (2, 2), (12, 12))
    assert_untouched(before, model)


def test_conv1d_audio_network() -> None:
    """M5-like on (time, channels) = (4000, 1): k80 s4: [0, 79] j4; max pool 4: units
    4p..4p+3: [0, 91] j16; k3: [0, 123]; max pool 4: [0, 171] j64; feat k3 'same' (pad 1):
    units s-1..s+1: [-64, 235]: 300 / 64 / 64."""
    inputs = keras.Input((4000, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv1D(16, 80, strides=4)(inputs)))
    x = L.Conv1D(32, 3, activation="relu")(L.MaxPooling1D(4)(x))
    x = L.Conv1D(32, 3, padding="same", activation="relu", name="feat")(L.MaxPooling1D(4)(x))
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(x))
    before = state(model)
    rf = rfest.compute(model, backend="keras", output="feat")
    assert geometry(rf) == ((300,), (64,), (64,))
    assert_untouched(before, model)


class ChannelScale(L.Layer):
    """A learned per-channel scale: pointwise."""

    def build(self, shape: Any) -> None:
        self.gamma = self.add_weight(shape=(shape[-1],), initializer="ones", name="gamma")

    def call(self, x: Any) -> Any:
        return x * self.gamma


class ReZero(L.Layer):
    """x + alpha * conv k3 'same'(conv k3 'same'(x)), alpha initialized to 0 (trained, it
    is not): the branch counts, as every weight does when linearized."""

    def __init__(self, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = L.Conv2D(width, 3, padding="same", activation="relu")
        self.b = L.Conv2D(width, 3, padding="same")

    def build(self, shape: Any) -> None:
        self.alpha = self.add_weight(shape=(), initializer="zeros", name="alpha")

    def call(self, x: Any) -> Any:
        return x + self.alpha * self.b(self.a(x))


def test_custom_layers_with_their_own_weights() -> None:
    """k3 valid: [0, 2]; scale; ReZero's two k3 'same' (skip inside): [-2, 4];
    k3 s2 valid: units 2k..2k+2: [-2, 6] j2: 9 / 2 / 2."""
    inputs = keras.Input((64, 64, 3))
    x = ChannelScale(name="scale")(L.Conv2D(8, 3)(inputs))
    x = ReZero(8, name="rezero")(x)
    model = keras.Model(inputs, L.Conv2D(8, 3, strides=2, name="out")(x))
    before = state(model)
    assert geometry(rfest.compute(model, backend="keras")) == ((9, 9), (2, 2), (2, 2))
    assert_untouched(before, model)


def test_model_output_is_a_keras_ops_operation() -> None:
    """The output is sigmoid(mean over channels), no layer of its own. k5 s2 valid:
    [0, 4] j2; k3 valid: [0, 8]: 9 / 2 / 0, for the output and for last_conv alike."""
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(8, 5, strides=2, activation="relu")(inputs)
    x = L.Conv2D(8, 3, name="last_conv")(x)
    model = keras.Model(inputs, keras.ops.sigmoid(keras.ops.mean(x, axis=-1, keepdims=True)))
    before = state(model)
    assert geometry(rfest.compute(model, backend="keras")) == ((9, 9), (2, 2), (0, 0))
    rf = rfest.compute(model, backend="keras", output="last_conv")
    assert geometry(rf) == ((9, 9), (2, 2), (0, 0))
    assert_untouched(before, model)


def _softmax_network(softmax: Any) -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    return keras.Model(inputs, L.Conv2D(4, 3, name="out")(softmax(x)))


@pytest.mark.parametrize(
    ("softmax", "expected"),
    [
        # a k3 'same' (pad 1): [k-1, k+1]; out k3 valid: [k-1, k+3], 5 / 1 / 1, except
        # along the axes a softmax divides by a sum over: every input there (QA round 7)
        (lambda: L.Softmax(axis=(1, 2)), None),
        (lambda: L.Softmax(axis=[1]), ((None, 5), (None, 1), (None, 1))),
        (lambda: L.Softmax(axis=2), ((5, None), (1, None), (1, None))),
        (lambda: L.Softmax(), ((5, 5), (1, 1), (1, 1))),  # over the channels
        (lambda: L.Activation("softmax"), ((5, 5), (1, 1), (1, 1))),
        (
            lambda: L.Lambda(
                lambda t: (
                    keras.ops.exp(t) / keras.ops.sum(keras.ops.exp(t), axis=(1, 2), keepdims=True)
                )
            ),
            None,
        ),
    ],
    ids=["softmax-image", "softmax-rows", "softmax-columns", "softmax", "activation", "lambda"],
)
def test_a_softmax_over_the_image_reaches_every_pixel_along_its_axes(
    softmax: Any, expected: Any
) -> None:
    model = _softmax_network(softmax())
    before = state(model)
    rf = rfest.compute(model, backend="keras")
    if expected is None:
        assert rf.is_global
    else:
        assert geometry(rf) == expected
    assert_untouched(before, model)


def test_random_crop_measured_as_keras_runs_it_at_inference() -> None:
    """RandomCrop(56, 56) then conv k3 valid. Keras 3.15 passes the input through at
    inference (its declared output shape still says 56): 3 / 1 / 0; Keras 3.3 resized to
    56 x 56 there, a size that does not follow the input's. Which one this Keras does is
    read from the model run at inference, not from rfest."""
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, L.Conv2D(8, 3, name="c1")(L.RandomCrop(56, 56)(inputs)))
    ran = tuple(model(np.ones((1, 64, 64, 3), "float32"), training=False).shape)
    before = state(model)
    if ran[1:3] == (62, 62):
        assert geometry(rfest.compute(model, backend="keras")) == ((3, 3), (1, 1), (0, 0))
    else:
        with pytest.raises(rfest.SizeDependentGeometryError):
            rfest.compute(model, backend="keras")
    assert_untouched(before, model)
