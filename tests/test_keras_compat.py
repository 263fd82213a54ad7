"""``rfest.compat.keras``: the ``receptivefield`` README's singular ``output_layer=`` call."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from keras_models import receptivefield_readme_net  # noqa: E402
from rfest.compat.keras import KerasReceptiveField  # noqa: E402
from rfest.compat.types import FeatureMapDescription, ReceptiveFieldDescription, Size  # noqa: E402

pytestmark = pytest.mark.keras


def readme_net(input_shape: tuple[int, ...]) -> keras.Model:
    model = receptivefield_readme_net(input_shape)
    model.layers[0].name = "input_image"
    return model


def test_singular_output_layer_returns_one_description() -> None:
    # keras_models.receptivefield_readme_net: 34 / 4 / 0 on 96x96 -> 16x16 grid, offset
    # 16.5, which the receptivefield package reports as 17.0 (offset + 0.5).
    expected = FeatureMapDescription(
        Size(16, 16), ReceptiveFieldDescription((17.0, 17.0), (4.0, 4.0), Size(34, 34))
    )
    rf = KerasReceptiveField(readme_net)
    one = rf.compute(
        input_shape=(96, 96, 3), input_layer="input_image", output_layer="feature_grid"
    )
    assert one == expected
    many = rf.compute((96, 96, 3), "input_image", output_layers=["feature_grid"])
    assert many == [expected]


def test_output_layer_and_output_layers_are_exclusive() -> None:
    rf = KerasReceptiveField(readme_net)
    with pytest.raises(TypeError, match="exactly one"):
        rf.compute((96, 96, 3), "input_image")
    with pytest.raises(TypeError, match="output_layer="):
        rf.compute((96, 96, 3), "input_image", output_layers="feature_grid")  # type: ignore[arg-type]
