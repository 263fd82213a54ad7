"""The user's Keras model and Keras' global state are left as they were; other members."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402
from keras.src.backend.common import global_state  # noqa: E402

import rfest  # noqa: E402
from keras_models import FixedSizeNet, SmallNet, receptivefield_readme_net  # noqa: E402
from rfest_keras import provider  # noqa: E402
from rfest_keras._autodiff import to_numpy  # noqa: E402

pytestmark = pytest.mark.keras


def snapshot(model: keras.Model) -> list[tuple[str, np.ndarray, bool, str]]:
    return [(v.path, to_numpy(v), v.trainable, str(v.dtype)) for v in model.weights]


def test_model_weights_flags_and_globals_untouched() -> None:
    model = receptivefield_readme_net()
    model.get_layer("feature_grid").trainable = False
    x = inputs = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, name="c")(x)
    x = L.BatchNormalization(name="bn")(x)
    norm = keras.Model(inputs, L.MaxPooling2D(2, name="pool")(x))
    floatx, policy = keras.config.floatx(), global_state.get_global_attribute("dtype_policy")
    for net, shape, output in ((model, None, "feature_grid"), (norm, (20, 20, 3), "pool")):
        before = snapshot(net)
        rfest.compute(net, shape, output=output)
        rfest.compute(
            net, shape, output=net.layers[1].name if net is model else "bn", linearize=False
        )
        after = snapshot(net)
        assert [a[0] for a in after] == [b[0] for b in before]
        for (path, value, trainable, dtype), (_, v2, t2, d2) in zip(before, after, strict=True):
            assert np.array_equal(value, v2) and trainable == t2 and dtype == d2, path
    assert keras.config.floatx() == floatx
    assert global_state.get_global_attribute("dtype_policy") is policy
    assert model.get_layer("feature_grid").trainable is False


def test_float32_option_and_layer_names() -> None:
    model = receptivefield_readme_net()
    assert rfest.compute(model, output="feature_grid", dtype="float32").size == (34, 34)
    names = provider(model).layer_names()
    assert names[-1] == "feature_grid" and len(names) == 8  # 6 convs 2 pools, no input


def test_input_gradients_are_signed_and_channels_first() -> None:
    # One 1x1 conv, weights (1, -2, 3) per input channel: d out[2, 3] / d x = w at (2, 3).
    x = inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, L.Conv2D(1, 1, use_bias=False, name="c")(x))
    model.get_layer("c").set_weights([np.array([1.0, -2.0, 3.0]).reshape(1, 1, 3, 1)])
    before = snapshot(model)
    p = provider(model, input_shape=(6, 7, 3), output="c", linearize=False)
    grad = p.input_gradients(np.random.default_rng(0).random((2, 6, 7, 3)), "c", (2, 3))
    expected = np.zeros((2, 3, 6, 7))
    expected[:, :, 2, 3] = [1.0, -2.0, 3.0]
    assert grad.dtype == np.float64 and np.array_equal(grad, expected)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(before, snapshot(model), strict=True))


def test_errors_say_what_to_fix() -> None:
    model = receptivefield_readme_net()
    with pytest.raises(rfest.OutputNotFoundError, match="feature_grid"):
        rfest.compute(model, output="feature_grd")
    with pytest.raises(rfest.InputShapeError, match="declared"):
        rfest.compute(model, (96, 96, 4))
    with pytest.raises(rfest.InputShapeError, match="input_shape"):
        rfest.compute(SmallNet(), backend="keras")
    with pytest.raises(rfest.InputShapeError, match="input_shape"):
        rfest.compute(receptivefield_readme_net, backend="keras")


def test_fixed_size_subclassed_model_asks_for_a_build_function() -> None:
    with pytest.raises(rfest.ModelCallError, match="build function"):
        rfest.compute(FixedSizeNet(), (12, 12, 1), backend="keras", output="conv")
    # The build function gives one model per probe size: k3 valid -> 3 / 1 / 0.
    rf = rfest.compute(lambda shape: FixedSizeNet(), (12, 12, 1), backend="keras", output="conv")
    assert (rf.size, rf.stride, rf.padding) == ((3, 3), (1, 1), (0, 0))


def test_probe_memory_is_known_before_allocation() -> None:
    model = receptivefield_readme_net()
    with pytest.raises(rfest.ProbeSizeError, match="max_memory_gib"):
        rfest.compute(model, output="feature_grid", max_memory_gib=1e-6)
    with pytest.raises(rfest.OptionError, match="max_memory_gib"):
        rfest.compute(model, output="feature_grid", max_memory_gib=0)
    # A budget of 1.5 units at full size: the units of a probe run one at a time, and the
    # gradient maps are the same.
    p = provider(model, output="feature_grid")
    units = [(7, 7), (8, 8), (0, 0)]
    together = p.gradient_maps((96, 96), "feature_grid", units)
    assert p._budget.per_pixel is not None
    one_unit_gib = p._budget.per_pixel * 96 * 96 * 8 * 2 / 2**30
    small = provider(model, output="feature_grid", max_memory_gib=1.5 * one_unit_gib)
    assert np.array_equal(small.gradient_maps((96, 96), "feature_grid", units), together)
    assert small._budget.batch(96 * 96, 3, (96, 96)) == 1
