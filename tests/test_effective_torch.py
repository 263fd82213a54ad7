"""Effective receptive field on PyTorch: closed forms, real weights, options and safety.

Closed form: n stacked 3x3 convolutions with one positive weight everywhere and no
nonlinearity give every input pixel a gradient proportional to the number of paths to the
unit, which is the product over axes of the trinomial counts ``[1, 1, 1]^{*n}`` (every
input channel alike). Each convolution adds variance (1 + 0 + 1) / 3 = 2/3 per axis, so
sigma is sqrt(2n/3) along an axis crossed by n 3-tap kernels.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from rfest import effective  # noqa: E402
from rfest._effective import DEFAULT_RANDOM_IMAGES  # noqa: E402
from rfest._errors import InputShapeError, NoDependenceError  # noqa: E402
from test_effective_stats import fewest_holding, trinomial  # noqa: E402

pytestmark = pytest.mark.torch


def uniform_stack(
    kernels: list[tuple[int, ...]], channels: int = 3, in_channels: int = 2
) -> nn.Module:
    """Bias-free convolutions, 'same' padding, every weight 0.2: a positive linear net."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(kernels[0])]
    layers = []
    for k, kernel in enumerate(kernels):
        layer = conv(
            in_channels if k == 0 else channels,
            channels,
            kernel,
            padding=tuple((s - 1) // 2 for s in kernel),
            bias=False,
        )
        nn.init.constant_(layer.weight, 0.2)
        layers.append(layer)
    return nn.Sequential(*layers)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_stacked_uniform_convolutions_have_sigma_sqrt_2n_over_3(n: int) -> None:
    # Input 29 x 35, 'same' padding: the centre unit is (14, 17) and, n <= 8 pixels from it,
    # its field 14 - n .. 14 + n x 17 - n .. 17 + n never touches a border (no clipping).
    # The theoretical field is 2n + 1 pixels per axis.
    # rfest.compute (the theoretical field) dominates the time: check it for two depths.
    with_rf = n in (2, 5)
    erf = effective(
        uniform_stack([(3, 3)] * n), (2, 29, 35), num_images=4, batch_size=2, theoretical=with_rf
    )
    assert erf.units == ((14, 17),)
    assert erf.center_of_mass == pytest.approx((14.0, 17.0), abs=1e-9)
    assert erf.sigma == pytest.approx((math.sqrt(2 * n / 3),) * 2, abs=1e-9)
    counts = trinomial(n)
    expected = np.zeros((29, 35))
    expected[14 - n : 15 + n, 17 - n : 18 + n] = np.outer(counts, counts)
    np.testing.assert_allclose(
        erf.heatmap / erf.heatmap.sum(), expected / expected.sum(), rtol=1e-12, atol=1e-15
    )
    for f in (0.5, 0.9):
        length = fewest_holding(counts, Fraction(str(f)))
        assert erf.extent[f] == (length, length)
        area = fewest_holding(np.outer(counts, counts), Fraction(str(f)))
        assert erf.area[f] == area
        if with_rf:
            assert erf.area_ratio[f] == pytest.approx(area / (2 * n + 1) ** 2, abs=1e-15)
    if with_rf:
        assert erf.receptive_field is not None
        assert erf.receptive_field.size == (2 * n + 1,) * 2
        assert erf.rf_box == ((14 - n, 15 + n), (17 - n, 18 + n))
    else:
        assert erf.receptive_field is None and erf.area_ratio[0.5] is None


def test_axes_crossed_by_different_numbers_of_kernels() -> None:
    # 4 kernels 3x3 then 3 kernels 3x1: axis 0 is crossed by 7 three-tap kernels, axis 1 by
    # 4. Sigma (sqrt(14/3), sqrt(8/3)); heatmap outer(trinomial(7), trinomial(4)) around the
    # centre unit (10, 12) of a 21 x 25 input; theoretical field 15 x 9.
    erf = effective(uniform_stack([(3, 3)] * 4 + [(3, 1)] * 3), (2, 21, 25), num_images=2)
    assert erf.center_of_mass == pytest.approx((10.0, 12.0), abs=1e-9)
    assert erf.sigma == pytest.approx((math.sqrt(14 / 3), math.sqrt(8 / 3)), abs=1e-9)
    rows, cols = trinomial(7), trinomial(4)
    expected = np.zeros((21, 25))
    expected[3:18, 8:17] = np.outer(rows, cols)
    np.testing.assert_allclose(
        erf.heatmap / erf.heatmap.sum(), expected / expected.sum(), rtol=1e-12, atol=1e-15
    )
    assert erf.receptive_field is not None and erf.receptive_field.size == (15, 9)
    assert erf.rf_area == 15 * 9 and erf.rf_box == ((3, 18), (8, 17))
    assert erf.area_ratio[0.9] == erf.area[0.9] / 135
    assert erf.extent[0.9] == (
        fewest_holding(rows, Fraction("0.9")),
        fewest_holding(cols, Fraction("0.9")),
    )


def test_valid_convolutions_shift_the_centre() -> None:
    # 3 unpadded 3x3 convs: output (17 - 6) x (20 - 6) = 11 x 14, centre unit (5, 6); unit i
    # sees inputs i .. i + 6, centred on i + 3: centre of mass (8, 9), sigma sqrt(2).
    net = nn.Sequential(*(nn.Conv2d(1, 1, 3, bias=False) for _ in range(3)))
    for layer in net:
        nn.init.constant_(layer.weight, 0.5)
    erf = effective(net, (1, 17, 20), num_images=1)
    assert erf.output_shape == (11, 14) and erf.units == ((5, 6),)
    assert erf.center_of_mass == pytest.approx((8.0, 9.0), abs=1e-9)
    assert erf.sigma == pytest.approx((math.sqrt(2.0),) * 2, abs=1e-9)


def test_one_and_three_spatial_axes() -> None:
    # 1-D: 6 kernels, sigma sqrt(12/3) = 2, centre unit 20 of 41.
    one = effective(uniform_stack([(3,)] * 6), (2, 41), num_images=2, theoretical=False)
    assert one.center_of_mass == pytest.approx((20.0,), abs=1e-9)
    assert one.sigma == pytest.approx((2.0,), abs=1e-9)
    assert one.extent[0.9] == (fewest_holding(trinomial(6), Fraction("0.9")),)
    # 3-D: 2 kernels 3x3x3, sigma sqrt(4/3) per axis, centre unit (3, 4, 5) of 7 x 9 x 11.
    three = effective(
        uniform_stack([(3, 3, 3)] * 2, channels=2, in_channels=1),
        (1, 7, 9, 11),
        num_images=1,
        theoretical=False,
    )
    assert three.center_of_mass == pytest.approx((3.0, 4.0, 5.0), abs=1e-9)
    assert three.sigma == pytest.approx((math.sqrt(4 / 3),) * 3, abs=1e-9)


def test_absolute_value_or_positive_part() -> None:
    # One linear conv, pad 1: d out[3, 3] / d in[2 + a, 2 + b] = w[a, b] whatever the input.
    # |w| = [[1, 2, 0], [0, 3, 1], [.5, 0, 0]], total 7.5: row masses 3, 4, .5 at rows 2, 3, 4
    # -> centre (6 + 12 + 2) / 7.5 = 8/3; column masses 1.5, 5, 1 -> (3 + 15 + 4) / 7.5 = 44/15.
    # max(w, 0) = [[1, 0, 0], [0, 3, 0], [.5, 0, 0]], total 4.5: rows 1, 3, .5 ->
    # (2 + 9 + 2) / 4.5 = 26/9; columns 1.5, 3, 0 -> (3 + 9) / 4.5 = 8/3.
    w = torch.tensor([[1.0, -2, 0], [0, 3, -1], [0.5, 0, 0]])
    net = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        net.weight.copy_(w)
    absolute = effective(net, (1, 7, 7), num_images=3, theoretical=False)
    positive = effective(net, (1, 7, 7), num_images=3, contribution="positive", theoretical=False)
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = np.abs(w.numpy())
    np.testing.assert_allclose(absolute.heatmap, expected, atol=1e-15)
    expected[2:5, 2:5] = np.maximum(w.numpy(), 0)
    np.testing.assert_allclose(positive.heatmap, expected, atol=1e-15)
    assert absolute.center_of_mass == pytest.approx((8 / 3, 44 / 15), abs=1e-12)
    assert positive.center_of_mass == pytest.approx((26 / 9, 8 / 3), abs=1e-12)
    assert positive.options["contribution"] == "positive"


def relu_net(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(3)
    norm: list[nn.Module] = []
    if batch_norm:
        bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        norm = [bn]
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        *norm,
        nn.Dropout(0.3),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, padding=1),
    )


def autograd_heatmap(net: nn.Module, images: np.ndarray, unit: tuple[int, int]) -> np.ndarray:
    """Direct autograd on a float64 eval copy: mean over images of sum_c |d unit / d x|."""
    ref = copy.deepcopy(net).double().eval()
    x = torch.tensor(images, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ref(x)[:, :, unit[0], unit[1]].sum(), x)
    return grad.abs().sum(dim=1).mean(dim=0).numpy()


@pytest.mark.parametrize(
    "batch_norm",
    [False, True],
)
def test_real_weights_match_direct_autograd_on_given_inputs(batch_norm: bool) -> None:
    # Reference: autograd on an eval() float64 copy (dropout off, running statistics).
    net = relu_net(batch_norm)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = np.random.default_rng(7).standard_normal((10, 2, 12, 12))
    expected = autograd_heatmap(net, images, (5, 5))
    as_array = effective(net, inputs=images, batch_size=4, theoretical=False)
    as_batches = effective(net, inputs=[images[:3], images[3:8], images[8:]], theoretical=False)
    for erf in (as_array, as_batches):
        assert erf.num_images == 10 and erf.input_shape == (2, 12, 12)
        np.testing.assert_allclose(erf.heatmap, expected, rtol=1e-12, atol=1e-15)
    assert all(module.training for module in net.modules())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not as_array.heatmap.flags.writeable


def test_num_images_caps_a_lazily_read_stream() -> None:
    net = relu_net()
    images = np.random.default_rng(8).standard_normal((12, 2, 10, 10))
    read = []

    def stream() -> Iterator[np.ndarray]:
        for start in range(0, 12, 4):
            read.append(start)
            yield images[start : start + 4]

    erf = effective(net, (2, 10, 10), inputs=stream(), num_images=6, theoretical=False)
    # 6 images: the first batch of 4 and 2 of the second; the third batch is never read.
    assert erf.num_images == 6 and read == [0, 4]
    np.testing.assert_allclose(
        erf.heatmap, autograd_heatmap(net, images[:6], (4, 4)), rtol=1e-12, atol=1e-15
    )


def test_default_random_inputs_are_seeded_and_recorded() -> None:
    net = relu_net()
    first = effective(net, (2, 10, 10), theoretical=False)
    again = effective(net, (2, 10, 10), theoretical=False)
    other = effective(net, (2, 10, 10), seed=1, theoretical=False)
    assert first.num_images == DEFAULT_RANDOM_IMAGES == 64
    np.testing.assert_array_equal(first.heatmap, again.heatmap)
    assert not np.array_equal(first.heatmap, other.heatmap)  # ReLUs make it input-dependent
    images = np.random.default_rng(0).standard_normal((64, 2, 10, 10))
    np.testing.assert_allclose(
        first.heatmap, autograd_heatmap(net, images, (4, 4)), rtol=1e-12, atol=1e-15
    )
    assert first.options["inputs"] == "random normal" and first.options["seed"] == 0
    assert first.input_shape == (2, 10, 10) and first.spatial_shape == (10, 10)


def test_several_units_are_averaged() -> None:
    # Single 3x3 conv of ones: units (2, 2) and (2, 5) see columns 1..3 and 4..6 of rows
    # 1..3: the mean heatmap is 1/2 on both 3x3 blocks; centre of mass (2, 3.5).
    net = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(net.weight, 1.0)
    erf = effective(net, (1, 6, 8), units=[(2, 2), (2, 5)], num_images=1)
    expected = np.zeros((6, 8))
    expected[1:4, 1:7] = 0.5
    np.testing.assert_allclose(erf.heatmap, expected, atol=1e-15)
    assert erf.center_of_mass == pytest.approx((2.0, 3.5), abs=1e-12)
    assert erf.rf_box == ((1, 4), (1, 7))


class Gated(nn.Module):
    """conv 3x3 then a squeeze-excite gate: every pixel reaches every unit through the mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.sigmoid(y.mean(dim=(2, 3), keepdim=True))


def test_global_theoretical_field_compares_with_the_whole_input() -> None:
    # Global field (the gate): the theoretical area is the whole 12 x 14 input, there is no
    # box, and the gate spreads a little mass over every pixel.
    erf = effective(Gated(), (1, 12, 14), num_images=4, max_input_size=256)
    assert erf.receptive_field is not None and erf.receptive_field.is_global
    assert erf.rf_area == 12 * 14 and erf.rf_box == (None, None)
    assert erf.area_ratio[0.5] == erf.area[0.5] / 168
    assert np.all(erf.heatmap > 0)


def test_progress_goes_to_the_stream() -> None:
    stream = io.StringIO()
    effective(relu_net(), (2, 8, 8), num_images=5, batch_size=2, progress=stream, theoretical=False)
    assert stream.getvalue().split("\r")[-1] == "rfest.effective: 5/5 images\n"


def test_errors_say_what_to_change() -> None:
    net = relu_net()
    with pytest.raises(InputShapeError, match="input_shape"):
        effective(net)
    with pytest.raises(InputShapeError, match="every"):
        effective(net, (2, None, 8))  # type: ignore[arg-type]
    with pytest.raises(InputShapeError, match="expected"):
        effective(net, (2, 8, 8), inputs=np.zeros((3, 2, 9, 8)))
    with pytest.raises(ValueError, match="contribution"):
        effective(net, (2, 8, 8), contribution="signed")
    with pytest.raises(InputShapeError, match="grid"):
        effective(net, (2, 8, 8), units=(8, 0))
    dead = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    nn.init.constant_(dead[0].bias, -100.0)
    nn.init.constant_(dead[0].weight, 1.0)
    with pytest.raises(NoDependenceError, match="zero everywhere"):
        effective(dead, (1, 5, 5), num_images=2, theoretical=False)


@pytest.mark.slow
def test_deep_relu_net_default_init_erf_is_far_below_the_theoretical_field(
    record_property: pytest.RecordProperty,
) -> None:
    # 16 'same' 3x3 conv + ReLU layers: theoretical field 1 + 2 * 16 = 33 per axis (1089
    # pixels). Luo et al. (2016): the ERF grows like sqrt(depth) and holds most of its mass
    # in a small Gaussian-like blob, far inside the theoretical field.
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for k in range(16):
        layers += [nn.Conv2d(3 if k == 0 else 8, 8, 3, padding=1), nn.ReLU()]
    net = nn.Sequential(*layers)
    # The theoretical field is known by hand (rfest.compute agrees: the closed-form tests
    # above check area_ratio against it); skipping it here saves most of the time.
    erf = effective(
        net, (3, 41, 41), num_images=32, batch_size=32, dtype="float32", theoretical=False
    )
    ratio = {f: erf.area[f] / 33**2 for f in erf.fractions}
    record_property("erf_area_ratio", ratio)
    record_property("erf_sigma", erf.sigma)
    print(f"\ndeep ReLU net: {erf}; area / 33^2: {ratio}")
    assert ratio[0.5] < 0.1 and ratio[0.9] < 0.35
    assert all(s < 33 / 4 for s in erf.sigma)  # a uniform 33-pixel box has sigma 9.5


def test_plot_draws_the_box_and_contours_without_pyplot() -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    erf = effective(uniform_stack([(3, 3)] * 3), (2, 15, 17), num_images=1)
    figure = erf.plot()
    assert isinstance(figure, Figure)
    boxes = [p for p in figure.axes[0].patches if isinstance(p, Rectangle)]
    # Centre unit (7, 8), field 7: rows 4..10, columns 5..11, drawn with pixel edges at -0.5.
    assert [(b.get_x(), b.get_y(), b.get_width(), b.get_height()) for b in boxes] == [
        (4.5, 3.5, 7, 7)
    ]
    figure.savefig(io.BytesIO(), format="png")
    line = effective(uniform_stack([(3,)] * 2), (2, 11), num_images=1).plot(fractions=(0.5,))
    assert isinstance(line, Figure)
