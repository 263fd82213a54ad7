"""Models Keras users write: run as they are (no copy), exact, and left untouched.

Each field is worked by hand in ``tests/keras_models.py``; ``tests/test_keras_backends.py``
reruns this module with KERAS_BACKEND=jax and =torch.
"""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import rfest  # noqa: E402
from keras_models import (  # noqa: E402
    NoConfigNet,
    assert_untouched,
    custom_layer_net,
    lambda_net,
    shared_block_net,
    shared_layer_net,
    state,
)

pytestmark = pytest.mark.keras


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object]:
    return rf.size, rf.stride, rf.padding


def test_subclassed_model_without_get_config() -> None:
    model = NoConfigNet()
    model(np.zeros((1, 20, 20, 3), "float32"))  # built, as a trained model is
    before = state(model)
    rfs = rfest.compute(model, (20, 20, 3), backend="keras", output=["conv1", "conv2"])
    assert geometry(rfs["conv1"]) == ((3, 3), (1, 1), (0, 0))
    assert geometry(rfs["conv2"]) == ((8, 8), (2, 2), (0, 0))
    assert_untouched(before, model)


def test_shared_layer_applied_twice_names_each_call() -> None:
    model = shared_layer_net()
    before = state(model)
    rfs = rfest.compute(model, (20, 20, 3), output=["shared:1", "shared:2", "head"])
    assert geometry(rfs["shared:1"]) == ((3, 3), (1, 1), (0, 0))
    assert geometry(rfs["shared:2"]) == ((5, 5), (1, 1), (0, 0))
    assert geometry(rfs["head"]) == ((5, 5), (1, 1), (0, 0))
    with pytest.raises(rfest.OutputNotFoundError, match="shared:2"):
        rfest.compute(model, (20, 20, 3), output="shared")
    assert_untouched(before, model)


def test_nested_block_applied_twice() -> None:
    model = shared_block_net()
    before = state(model)
    assert geometry(rfest.compute(model, (24, 24, 8))) == ((5, 5), (1, 1), (2, 2))
    assert_untouched(before, model)


def test_lambda_layer() -> None:
    model = lambda_net()
    before = state(model)
    assert geometry(rfest.compute(model, (20, 20, 3))) == ((5, 5), (1, 1), (0, 0))
    assert_untouched(before, model)


def test_custom_layer_with_gate_and_raw_ops() -> None:
    model = custom_layer_net()
    before = state(model)
    rfs = rfest.compute(model, (24, 24, 3), output=["block", "head"])
    assert geometry(rfs["block"]) == ((4, 4), (2, 2), (1, 1))
    assert geometry(rfs["head"]) == ((8, 8), (2, 2), (1, 1))
    assert_untouched(before, model)


def _backbone() -> tuple[keras.Model, str, tuple[int, int, int]]:
    """An Application built for a fixed input size, its last layer and its field.

    VGG16 at 64x64, block5_pool: published_rf_tf_slim.csv vgg_16 pool5, 212 / 32 / 90 at
    any size (3x3 'same' stride-1 convolutions, 2x2 pools), far larger than 64.
    """
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
    return base, "block5_pool", (212, 32, 90)


def test_transfer_learning_backbone_with_fixed_input_size() -> None:
    # The backbone nested at its fixed size in a functional model with a new head; the
    # probe grows past the size the backbone was built for.
    base, last, (size, stride, padding) = _backbone()
    x = inputs = keras.Input(base.input_shape[1:])
    x = L.GlobalAveragePooling2D()(base(x))
    model = keras.Model(inputs, L.Dense(2)(x))
    before = state(model)
    rf = rfest.compute(model, output=last)
    assert geometry(rf) == ((size,) * 2, (stride,) * 2, (padding,) * 2) and rf.grown
    assert geometry(rfest.compute(model, output=base.name)) == geometry(rf)
    assert rfest.compute(model).is_global
    assert_untouched(before, model)


def test_live_route_on_a_model_that_cannot_be_copied() -> None:
    # The Lambda makes the model's config unloadable (safe mode) and unnarrowable, so the
    # user's model runs as it is; a nested model's layer is found at any depth.
    inner = lambda_net()
    x = inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, L.Conv2D(1, 3, name="top")(inner(x)))
    before = state(model)
    assert geometry(rfest.compute(model, (24, 24, 3), output="lam")) == ((3, 3), (1, 1), (0, 0))
    assert geometry(rfest.compute(model, (24, 24, 3))) == ((7, 7), (1, 1), (0, 0))
    assert_untouched(before, model)


def test_tf_keras_model_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in whose type lives in a `tf_keras` module, as a Keras 2 model's does
    # (tf_keras itself need not be installed): detected as a Keras model, then refused
    # by name instead of being called as a build function.
    import sys
    import types

    module = types.ModuleType("tf_keras.src.engine.functional")
    functional = type("Functional", (), {"__module__": module.__name__, "__call__": print})
    monkeypatch.setitem(sys.modules, "tf_keras", types.ModuleType("tf_keras"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(rfest.BackendError, match=r"tf_keras.*Keras 3"):
        rfest.compute(functional(), (32, 32, 3))


def fixed_size_backbone() -> keras.Model:
    """A nested model whose Flatten + Dense head fixes its 8x8 input; two k5 'same' convs
    inside it (pad 2 each): r9, padding 4, larger than the input: the probe must grow."""
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(2, 5, padding="same", name="c1"),
            L.Conv2D(2, 5, padding="same", name="c2"),
            L.Flatten(),
            L.Dense(3, name="fixing_dense"),
        ],
        name="backbone",
    )
    x = inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, L.Dense(2)(inner(x)))


def test_nested_model_with_a_size_fixing_head() -> None:
    model = fixed_size_backbone()
    before = state(model)
    # Linearized, a copy is rebuilt at each grown size (constant weights fit any size).
    rf = rfest.compute(model, output="c2")
    assert geometry(rf) == ((9, 9), (1, 1), (4, 4)) and rf.grown
    # With its own weights the model cannot grow: the error names the layer that fixes it.
    with pytest.raises(rfest.ModelCallError, match="fixing_dense"):
        rfest.compute(model, output="c2", linearize=False)
    assert_untouched(before, model)


def test_a_channels_first_model_is_refused_with_the_way_out() -> None:
    """Read as (batch, *spatial, channels), a channels-first model would lose a spatial
    axis to its channels and come out with a plausible wrong field."""
    inputs = keras.Input((3, 32, 32))
    x = L.Conv2D(4, 3, data_format="channels_first", name="first")(inputs)
    model = keras.Model(inputs, L.MaxPooling2D(2, data_format="channels_first")(x))
    before = state(model)
    with pytest.raises(rfest.InputShapeError, match=r"'first'.*channels-first.*channels_last"):
        rfest.compute(model, backend="keras")
    assert_untouched(before, model)


def test_attention_between_reshapes_to_a_fixed_token_grid_is_global() -> None:
    """Patches to a fixed grid of 16x16 tokens, attention, back to a map: every unit sees
    every token, so the whole input, and the model takes no other size to probe at."""
    inputs = keras.Input((64, 64, 3))
    tokens = L.Reshape((256, 16))(L.Conv2D(16, 4, strides=4)(inputs))
    attended = L.MultiHeadAttention(num_heads=2, key_dim=8)(tokens, tokens)
    model = keras.Model(inputs, L.Conv2D(8, 1, name="out")(L.Reshape((16, 16, 16))(attended)))
    before = state(model)
    rf = rfest.compute(model, backend="keras", output="out")
    assert rf.is_global
    assert_untouched(before, model)


@pytest.mark.parametrize(
    "norm",
    [
        L.BatchNormalization,
        L.LayerNormalization,
        lambda: L.GroupNormalization(groups=4),
        L.UnitNormalization,
        lambda: L.LayerNormalization(axis=[1, 2, 3]),
    ],
    ids=["batch", "layer", "group", "unit", "layer-over-space"],
)
def test_normalization_between_convolutions_is_identity(norm: object) -> None:
    """Two 3x3 convolutions around a normalization: 3 + 2 = 5, stride 1, no padding, on
    every backend (on JAX Keras' group norm adds its mean back as a separate term)."""
    inputs = keras.Input((16, 16, 3))
    x = norm()(L.Conv2D(8, 3)(inputs))  # type: ignore[operator]
    model = keras.Model(inputs, L.Conv2D(4, 3)(x))
    before = state(model)
    rf = rfest.compute(model, backend="keras")
    assert geometry(rf) == ((5, 5), (1, 1), (0, 0))
    assert_untouched(before, model)
