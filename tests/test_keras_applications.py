"""Every model in ``keras.applications``, exact against layer recurrences.

Each application is built with ``weights=None, include_top=False`` at its default input
size and measured at its last spatial feature map (the model's output). The expected
field comes from ``tests/keras_recurrence.py``, a calculator that walks the model's
graph with the per-layer recurrences (no gradients, nothing from rfest); it agrees with
the published TF-slim table for the shared layouts (checked below). Squeeze-excite
families (EfficientNet, EfficientNetV2, MobileNetV3) come out global: their gates see
the whole input.

The default run measures a representative subset (one of each kind of difficulty:
squeeze-excite, a fixed input size, grouped 7x7 convolutions with layer scale, the
largest field); ``nox -s keras_applications`` (environment variable
``RFEST_KERAS_APPLICATIONS=all``) sweeps all of them.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import rfest  # noqa: E402
from keras_recurrence import DEFAULT_SIZE, MAX_INPUT_SIZE, field_of  # noqa: E402

pytestmark = pytest.mark.keras

REPRESENTATIVE = (
    "MobileNetV3Small",  # squeeze-excite and hard-swish products: global
    "NASNetMobile",  # declares a fixed 224x224 input; cells of separable convolutions
    "ConvNeXtTiny",  # grouped 7x7 convolutions, layer scale, graph-level adds
    "InceptionResNetV2",  # the largest field (3039 at 299): memory
)
ALL = sorted(name for name in dir(keras.applications) if name[:1].isupper())


def test_the_table_names_every_application() -> None:
    # A new application in Keras fails here until it has a default size (and is swept).
    assert set(ALL) == set(DEFAULT_SIZE)


def test_recurrence_calculator_matches_published_fields() -> None:
    # published_rf_tf_slim.csv: vgg_16 pool5 at 224 212/32/90; mobilenet_v1
    # Conv2d_13_pointwise at 224 315/32/126; inception_resnet_v2 Conv2d_7b_1x1 3039/32/1482.
    cases = [
        ("VGG16", 224, "block5_pool", (212, 32, 90)),
        ("MobileNet", 224, "conv_pw_13_relu", (315, 32, 126)),
        ("InceptionResNetV2", 299, "conv_7b", (3039, 32, 1482)),
    ]
    for name, size, layer, (rf, stride, padding) in cases:
        model = getattr(keras.applications, name)(
            weights=None, include_top=False, input_shape=(size, size, 3)
        )
        assert field_of(model, (size, size), layer) == ((rf,) * 2, (stride,) * 2, (padding,) * 2)
        del model
        _release()


def _application(name: str, size: int) -> keras.Model:
    if name.startswith("NASNet") and keras.backend.backend() == "torch":
        pytest.skip("Keras does not build NASNet on torch ('an outstanding bug', nasnet.py)")
    return getattr(keras.applications, name)(
        weights=None, include_top=False, input_shape=(size, size, 3)
    )


def _release() -> None:
    keras.backend.clear_session()
    gc.collect()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_application_last_feature_map(name: str) -> None:
    if name not in REPRESENTATIVE and os.environ.get("RFEST_KERAS_APPLICATIONS") != "all":
        pytest.skip("full sweep only: nox -s keras_applications (RFEST_KERAS_APPLICATIONS=all)")
    size = DEFAULT_SIZE[name]
    model = _application(name, size)
    expected = field_of(model, (size, size))
    rf = rfest.compute(model, max_input_size=MAX_INPUT_SIZE.get(name, 4096))
    del model
    _release()
    if expected is None:
        assert rf.is_global and rf.size is None
    else:
        assert not rf.is_global
        assert (rf.size, rf.stride, rf.padding) == expected
        assert rf.input_shape == (size, size)


@pytest.mark.slow
def test_squeeze_excite_family_at_intermediate_layers() -> None:
    # EfficientNetB0: exact before the first gate (block1a_activation: stem k3/2 with
    # zero padding, depthwise k3 'same'); every layer after block1a's gate is global.
    model = keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    layers = ["block1a_activation", "block1a_se_excite", "block4a_expand_conv", "top_activation"]
    rfs = rfest.compute(model, output=layers)
    before = field_of(model, (224, 224), "block1a_activation")
    assert before is not None
    assert (rfs["block1a_activation"].size, rfs["block1a_activation"].stride) == before[:2]
    assert rfs["block1a_activation"].padding == before[2]
    for layer in layers[1:]:
        assert field_of(model, (224, 224), layer) is None
        assert rfs[layer].is_global, layer


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV3Small", "NASNetMobile"])
def test_narrowed_maps_have_the_full_width_support(name: str) -> None:
    # The one-channel copy (compiled on TensorFlow) against the model itself at full width:
    # squeeze-excite and hard-swish products (MobileNetV3Small), concatenated cells of
    # separable convolutions (NASNetMobile). Same probe, same units, same support.
    if name != "MobileNetV3Small" and os.environ.get("RFEST_KERAS_APPLICATIONS") != "all":
        pytest.skip("full sweep only: nox -s keras_applications (RFEST_KERAS_APPLICATIONS=all)")
    from rfest_keras import provider

    size = DEFAULT_SIZE[name]
    model = _application(name, size)
    spatial = (size, 64)
    narrow, wide = provider(model), provider(model, narrow=False)
    (output,) = narrow.output_names
    rows = narrow.output_shapes(spatial)[output][0]
    assert wide.output_shapes(spatial)[output] == narrow.output_shapes(spatial)[output]
    units = [(0, 0), (rows // 2, 1), (rows - 1, 1)]
    narrowed = narrow.gradient_maps(spatial, output, units)
    full = wide.gradient_maps(spatial, output, units)
    del model, narrow, wide
    _release()
    assert narrowed.shape == full.shape == (len(units), *spatial)
    assert (full > 0).any(axis=(1, 2)).all()
    np.testing.assert_array_equal(narrowed > 0, full > 0)
