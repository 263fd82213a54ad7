"""Applications as users hold them, exact against layer recurrences, on every Keras backend.

``tests/test_keras_backends.py`` reruns this module with KERAS_BACKEND=jax and =torch
(each backend measures its own way: see docs/keras.md). Expected fields come from
``tests/keras_recurrence.py`` (graph walk with layer recurrences, nothing from rfest);
each model is left bit-identical.
"""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from keras import layers as L  # noqa: E402

import rfest  # noqa: E402
from keras_models import assert_untouched, receptivefield_readme_net, state  # noqa: E402
from keras_recurrence import field_of  # noqa: E402
from rfest._estimate import estimate  # noqa: E402
from rfest_keras import provider  # noqa: E402
from rfest_keras._rebuild import build_copy  # noqa: E402

pytestmark = pytest.mark.keras


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object]:
    return rf.size, rf.stride, rf.padding


def test_mobilenet_v2_backbone_with_fixed_input_size() -> None:
    # Transfer learning: MobileNetV2 built for 96x96, nested in a functional model with
    # a new head. Its last feature map's field (491 at stride 32) is far larger than 96,
    # so the probe grows past the size the backbone was built for.
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(96, 96, 3), alpha=0.35
    )
    expected = field_of(base, (96, 96), "out_relu")
    assert expected is not None
    x = inputs = keras.Input((96, 96, 3))
    x = L.GlobalAveragePooling2D()(base(x))
    model = keras.Model(inputs, L.Dense(2, name="logits")(x))
    before = state(model)
    rfs = rfest.compute(model, output=["out_relu", "block_6_project"])
    assert geometry(rfs["out_relu"]) == expected and rfs["out_relu"].grown
    assert geometry(rfs["block_6_project"]) == field_of(base, (96, 96), "block_6_project")
    assert rfest.compute(model).is_global
    assert_untouched(before, model)


def test_tutorial_transfer_model_with_augmentation_and_preprocessing() -> None:
    # Keras' transfer-learning tutorial: augmentation layers (identity at inference),
    # preprocess_input (keras.ops nodes: x / 127.5 - 1), then the frozen backbone. The
    # backbone's last map has the backbone's own field, and the copy keeps one channel
    # per layer through all of it (augmentation and ops nodes treat channels alike).
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(96, 96, 3), alpha=0.35
    )
    base.trainable = False
    augment = keras.Sequential(
        [L.RandomFlip("horizontal"), L.RandomRotation(0.2), L.RandomZoom(0.1)], name="augment"
    )
    inputs = keras.Input((96, 96, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(augment(inputs))
    x = L.GlobalAveragePooling2D()(base(x, training=False))
    model = keras.Model(inputs, L.Dense(1)(L.Dropout(0.2)(x)))
    before = state(model)
    rf = rfest.compute(model, output="out_relu")
    assert geometry(rf) == field_of(base, (96, 96), "out_relu")
    assert_untouched(before, model)
    if keras.backend.backend() != "jax":  # JAX measures through the jaxpr, not a copy
        built = build_copy(model, [None, None], 0, dtype="float64", linearize=True, narrow=True)
        assert built.narrowed


def test_the_framework_under_keras_chooses_the_route() -> None:
    # On JAX the model is measured through its jaxpr (rfest_keras._on_jax); elsewhere by
    # the TensorFlow/PyTorch routes. Either way the README network is 34 / 4 / 0.
    model = receptivefield_readme_net()
    before = state(model)
    chosen = type(provider(model, output="feature_grid")).__name__
    assert chosen == ("KerasOnJax" if keras.backend.backend() == "jax" else "KerasGradientProvider")
    rf = rfest.compute(model, output="feature_grid")
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))
    assert_untouched(before, model)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="only the jaxpr route sees ops inside a Lambda"
)
def test_jax_route_linearizes_raw_ops_inside_a_lambda() -> None:
    # A max pooling written by hand in a Lambda: out[i] = max(c[i], 2 c[i + 1]) along axis
    # 0 after a k3 valid conv (c[i] sees rows i..i+2). Linearized as the mean of its
    # operands (as MaxPooling is), unit i sees rows i..i+3: size 4 / 1 / 0 on axis 0 and
    # the conv's 3 / 1 / 0 on axis 1. Run as written, the max would pick 2 c[i + 1] alone.
    x = inputs = keras.Input((None, None, 1))
    x = L.Conv2D(2, 3, name="conv")(x)
    x = L.Lambda(lambda t: keras.ops.maximum(t[:, :-1], 2.0 * t[:, 1:]), name="max")(x)
    model = keras.Model(inputs, x)
    before = state(model)
    rf = rfest.compute(model, (20, 20, 1))
    assert geometry(rf) == ((4, 3), (1, 1), (0, 0))
    assert_untouched(before, model)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the border proof reads the traced jaxpr"
)
@pytest.mark.parametrize(("padding", "second_size"), [("valid", False), ("same", True)])
def test_jax_route_skips_the_second_size_where_no_border_is_read(
    padding: str, second_size: bool
) -> None:
    # Two k3 convolutions and a 2x2 pooling: 'valid', no unit's field meets a border at any
    # size (rfest_jax._borders), so the check at a second, 1024-long size cannot change the
    # answer; 'same' pads, and the check runs. Worked by hand: two k3 make 5, the 2x2 pool
    # 6 at stride 2; padding 0 ('valid') or 1 + 1 = 2 ('same').
    x = inputs = keras.Input((None, None, 1))
    x = L.Conv2D(2, 3, padding=padding)(x)
    x = L.Conv2D(2, 3, padding=padding)(x)
    x = L.AveragePooling2D(2, name="pool")(x)
    model = keras.Model(inputs, x)
    measured = provider(model, input_shape=(24, 24, 1), output="pool")
    sizes: list[tuple[int, ...]] = []
    maps = measured.gradient_maps

    def recorded(spatial_shape, output_name, units):  # type: ignore[no-untyped-def]
        sizes.append(tuple(spatial_shape))
        return maps(spatial_shape, output_name, units)

    measured.gradient_maps = recorded  # type: ignore[method-assign]
    rf = estimate(measured, "pool")
    assert geometry(rf) == ((6, 6), (2, 2), (0, 0) if padding == "valid" else (2, 2))
    assert any(max(s) >= 1024 for s in sizes) == second_size


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the jaxpr route's own trace")
def test_jax_route_walks_built_in_graphs_without_layer_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A graph of built-in layers is traced by walking it and calling each layer's `call`
    # (with training=False: BatchNormalization's moving statistics, Dropout off); Keras'
    # `Layer.__call__` runs only where a layer is not built in (the custom layer below).
    # By hand: k3 valid conv 3 / 1 / 0; 2x2 pooling 4 / 2 / 0; the custom doubling adds
    # nothing.
    inner = keras.Sequential(
        [L.Conv2D(2, 3, name="conv"), L.BatchNormalization(), L.Dropout(0.5)], name="inner"
    )
    x = inputs = keras.Input((None, None, 1))
    x = L.MaxPooling2D(2, name="pool")(inner(x))
    built_in = keras.Model(inputs, x)
    custom = keras.Model(inputs, Doubled(name="doubled")(x))
    layer_calls: list[str] = []
    original = L.Layer.__call__

    def counted(self: L.Layer, *args: object, **kwargs: object) -> object:
        layer_calls.append(self.name)
        return original(self, *args, **kwargs)

    for model, output in ((built_in, "pool"), (custom, "doubled")):
        before = state(model)
        layer_calls.clear()
        monkeypatch.setattr(L.Layer, "__call__", counted)
        rfs = rfest.compute(model, (24, 24, 1), output=["conv", output])
        monkeypatch.setattr(L.Layer, "__call__", original)
        assert geometry(rfs["conv"]) == ((3, 3), (1, 1), (0, 0))
        assert geometry(rfs[output]) == ((4, 4), (2, 2), (0, 0))
        assert_untouched(before, model)
        if model is built_in:
            assert layer_calls == []
        else:
            assert {"conv", "pool", "doubled"} <= set(layer_calls)


class Doubled(L.Layer):
    def call(self, x: object) -> object:
        return keras.ops.multiply(x, 2.0)
