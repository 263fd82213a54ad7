"""Code written for ``receptivefield`` runs on ``rfest.compat`` with the import renamed.

receptivefield reports ``offset`` with pixel centres at half-integers (rfest's offset
+ 0.5) and ``(x, y)`` = (width, height) = (columns, rows). For the README network
(valid k5, k3, pool 2, k3, k3, pool 2, k3, k3): size 34, stride 4, padding 0, so rfest's
offset is 33 / 2 = 16.5 and receptivefield's 17.0, as its README prints.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import rfest  # noqa: E402
from rfest.compat.image import get_default_image, get_default_images  # noqa: E402
from rfest.compat.pytorch import PytorchReceptiveField  # noqa: E402
from rfest.compat.types import (  # noqa: E402
    FeatureMapDescription,
    ImageShape,
    ReceptiveFieldDescription,
    Size,
)
from rfest_torch.examples import receptivefield_readme_net  # noqa: E402


@pytest.fixture(autouse=True)
def _agg_and_close() -> Iterator[None]:
    backend = matplotlib.get_backend()
    plt.switch_backend("Agg")
    try:
        yield
    finally:
        plt.close("all")
        plt.switch_backend(backend)


class WithFeatureMaps(nn.Module):
    """receptivefield's PyTorch convention: forward() stores self.feature_maps."""

    def __init__(self, body: nn.Module, select: tuple[str, ...]) -> None:
        super().__init__()
        self.body = body
        self.select = select

    def forward(self, x: Tensor) -> Tensor:
        self.feature_maps = []
        for name, layer in self.body.named_children():
            x = layer(x)
            if name in self.select:
                self.feature_maps.append(x)
        return x


def simple_vgg(channels: int = 2) -> nn.Sequential:
    """The SimpleVGG of receptivefield's PyTorch README (ReLU instead of its Linear)."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(3, c, 3),
        nn.ReLU(),
        nn.Conv2d(c, c, 3),
        nn.ReLU(),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(c, c, 3),
        nn.ReLU(),
        nn.Conv2d(c, c, 3),
        nn.ReLU(),  # 8
        nn.AvgPool2d(2, 2),
        nn.Conv2d(c, c, 3),
        nn.ReLU(),
        nn.Conv2d(c, c, 3),
        nn.ReLU(),  # 13
    )


def test_readme_network_prints_what_receptivefield_printed() -> None:
    rf = PytorchReceptiveField(
        lambda: WithFeatureMaps(receptivefield_readme_net(), ("feature_grid",))
    )
    # float32 (an rfest option, passed through) keeps the test fast; the field is the same.
    (fm,) = rf.compute(input_shape=[96, 96, 3], dtype="float32")
    assert fm == FeatureMapDescription(
        size=Size(w=16, h=16),
        rf=ReceptiveFieldDescription(offset=(17.0, 17.0), stride=(4.0, 4.0), size=Size(34, 34)),
    )
    assert str(fm.rf) == (
        "ReceptiveFieldDescription(offset=(17.0, 17.0), stride=(4.0, 4.0), size=Size(w=34, h=34))"
    )
    assert rf.input_shape == ImageShape(w=96, h=96, c=3)
    assert rf.output_shapes == [Size(w=16, h=16)]
    assert rf.num_feature_maps == 1
    assert rf._output_shapes[0].c == 128  # the feature map's channels, as receptivefield had
    assert rf.fields[0].offset == (16.5, 16.5)  # rfest's own convention


@pytest.fixture(scope="module")
def vgg() -> PytorchReceptiveField:
    rf = PytorchReceptiveField(lambda: WithFeatureMaps(simple_vgg(), ("8", "13")))
    rf.compute(input_shape=[96, 96, 3])
    return rf


def test_simple_vgg_two_feature_maps(vgg: PytorchReceptiveField) -> None:
    # map 8: k3, k3 (r5), pool 2 (r6 j2), k3, k3 (r14); offset 13/2 + 0.5 = 7.0.
    # map 13: pool 2 (r16 j4), k3, k3 (r32); offset 31/2 + 0.5 = 16.0. (Its README: same.)
    # Sizes on 96 px: 94, 92, 46, 44, 42 | 21, 19, 17.
    assert [d.rf for d in vgg.feature_maps_desc] == [
        ReceptiveFieldDescription((7.0, 7.0), (2.0, 2.0), Size(14, 14)),
        ReceptiveFieldDescription((16.0, 16.0), (4.0, 4.0), Size(32, 32)),
    ]
    assert vgg.output_shapes == [Size(42, 42), Size(17, 17)]


def test_width_and_height_are_columns_and_rows() -> None:
    # kernel (3 rows, 7 columns): h 3, w 7. input_shape (W=40, H=30, C=3) -> tensor 3x30x40,
    # output 28 rows x 34 columns. Offsets: x (7-1)/2 + 0.5 = 3.5, y (3-1)/2 + 0.5 = 1.5.
    seen: list[tuple[int, ...]] = []

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, (3, 7))

        def forward(self, x: Tensor) -> Tensor:
            seen.append(tuple(x.shape[1:]))
            self.feature_maps = [self.conv(x)]
            return self.feature_maps[0]

    rf = PytorchReceptiveField(Net)
    (fm,) = rf.compute((40, 30, 3))
    assert fm == FeatureMapDescription(
        Size(w=34, h=28), ReceptiveFieldDescription((3.5, 1.5), (1.0, 1.0), Size(w=7, h=3))
    )
    assert rf.input_shape == ImageShape(w=40, h=30, c=3)
    assert seen[0] == (3, 30, 40)  # the model first runs on (C, H, W)
    fig = rf.plot_gradient_at(0, point=(33, 0))  # x = last column, y = first row
    (box,) = fig.axes[0].patches
    # unit (row 0, column 33) sees rows 0..2, columns 33..39.
    assert (box.get_xy(), box.get_width(), box.get_height()) == ((32.5, -0.5), 7, 3)


def test_plots_match_the_fields_and_go_to_pyplot(vgg: PytorchReceptiveField) -> None:
    before = len(plt.get_fignums())
    fig = vgg.plot_rf_grid(1, custom_image=get_default_image((96, 96)), figsize=(4, 4))
    assert len(plt.get_fignums()) == before + 1  # plt.show() / plt.savefig() still work
    # map 13: unit i sees 4i .. 4i + 31; 17 units, centre 8 -> 32..63.
    assert [p.get_xy() for p in fig.axes[0].patches] == [(-0.5, -0.5), (31.5, 31.5), (63.5, 63.5)]
    grids = vgg.plot_rf_grids(layout=(1, 2), figsize=(8, 4), plot_naive_rf=True)
    first, second = grids.axes
    # map 8: unit i sees 2i .. 2i + 13; 42 units: centre 21 -> 42..55, last 41 -> 82..95.
    assert [p.get_xy() for p in first.patches[:3]] == [(-0.5, -0.5), (41.5, 41.5), (81.5, 81.5)]
    naive = [p for p in second.patches if p.get_label() == "_naive"]
    assert len(naive) == 17 * 17
    fig = vgg.plot_gradient_at(fm_id=1, point=(8, 2), image=None, figsize=(5, 5))
    (box,) = fig.axes[0].patches  # x = column 8: 32..63; y = row 2: 8..39
    assert (box.get_xy(), box.get_width()) == ((31.5, 7.5), 32)
    both = vgg.plot_gradients_at([(0, 0), (16, 16)], layout=(1, 2))
    assert [a.patches[0].get_xy() for a in both.axes if a.patches] == [
        (-0.5, -0.5),
        (63.5, 63.5),
    ]
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_errors_say_what_to_change() -> None:
    class NoMaps(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    with pytest.raises(rfest.OutputNotFoundError, match=r"self\.feature_maps"):
        PytorchReceptiveField(NoMaps).compute((8, 8, 1))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            self.feature_maps = [y * 2]
            return y

    with pytest.raises(rfest.OutputNotFoundError, match="Identity"):
        PytorchReceptiveField(Functional).compute((8, 8, 1))
    with pytest.raises(RuntimeError, match="Run compute"):
        _ = PytorchReceptiveField(Functional).input_shape


def test_default_image_shapes() -> None:
    assert get_default_image((64, 48)).shape == (48, 64, 3)  # (width, height) -> rows 48
    assert get_default_image((64, 48, 3), tile_factor=1).shape == (144, 192, 3)
    assert get_default_image((20, 10), as_image=True).size == (20, 10)
    assert "lena" in get_default_images()
    with pytest.raises(ValueError, match="not one of"):
        get_default_image((8, 8), name="mandrill")


def test_keras_readme_example() -> None:
    keras = pytest.importorskip("keras")
    from rfest.compat.keras import KerasReceptiveField

    def model_build_func(input_shape: tuple[int, ...]) -> object:
        layers = keras.layers
        inp = layers.Input(shape=input_shape, name="input_image")
        x = layers.Conv2D(2, (5, 5))(inp)
        x = layers.Conv2D(2, (3, 3))(x)
        x = layers.AvgPool2D((2, 2))(x)
        x = layers.Conv2D(2, (3, 3))(x)
        x = layers.Conv2D(2, (3, 3))(x)
        x = layers.AvgPool2D((2, 2))(x)
        x = layers.Conv2D(2, (3, 3))(x)
        x = layers.Conv2D(2, (3, 3), name="feature_grid")(x)
        return keras.Model(inp, x)

    rf = KerasReceptiveField(model_build_func, init_weights=False)
    rf_params = rf.compute(
        input_shape=(96, 96, 3), input_layer="input_image", output_layers=["feature_grid"]
    )
    assert rf_params == [
        FeatureMapDescription(
            Size(16, 16), ReceptiveFieldDescription((17.0, 17.0), (4.0, 4.0), Size(34, 34))
        )
    ]
    assert rf.input_shape == ImageShape(96, 96, 3)
    fig = rf.plot_gradient_at(fm_id=0, point=(8, 8), image=None, figsize=(7, 7))
    (box,) = fig.axes[0].patches  # unit (8, 8): 32..65 on both axes
    assert box.get_xy() == (31.5, 31.5)
    assert np.isfinite(fig.axes[0].get_images()[0].get_array()).all()
