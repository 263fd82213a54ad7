"""PyTorch networks with receptive fields worked by hand from the layer recurrences.

Per axis, starting from r = 1, j = 1, first = 0 (first input index unit 0 sees):
``first += -p * j``; ``r += (k - 1) * d * j``; ``j *= s``; padding = -first.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rfest  # noqa: E402
from rfest_torch.examples import receptivefield_readme_net  # noqa: E402
from torch_models import ResNet50  # noqa: E402

pytestmark = pytest.mark.torch


def geometry(rf: rfest.ReceptiveField) -> tuple[object, object, object]:
    return rf.size, rf.stride, rf.padding


def test_receptivefield_readme_network_with_relu_and_max_pool() -> None:
    # conv5 r5; conv3 r7; pool2 r8 j2; conv3 r12; conv3 r16; pool2 r18 j4; conv3 r26; conv3 r34.
    rf = rfest.compute(receptivefield_readme_net(), (3, 96, 96), output="feature_grid")
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))
    assert rf.offset == (16.5, 16.5)
    assert rf.output_shape == (16, 16)


def test_resnet50_torchvision_layout_every_stage_in_one_call() -> None:
    # stem conv7/2 p3: r7 j2 first-3; maxpool3/2 p1: r11 j4 first-5.
    # layer1: 3 x 3x3 at j4 -> r35 first-17.  layer2: 3x3/2 at j4 -> r43 j8, +3 x 16 -> r91.
    # layer3: 3x3/2 at j8 -> r107 j16, +5 x 32 -> r267.  layer4: 3x3/2 at j16 -> r299 j32,
    # +2 x 64 -> r427.  Every layer pads (k-1)/2, so padding = (r-1)/2.
    torch.manual_seed(0)
    model = ResNet50()
    rfs = rfest.compute(model, (3, 224, 224), output=["layer1", "layer2", "layer3", "layer4"])
    expected = {"layer1": (35, 4), "layer2": (91, 8), "layer3": (267, 16), "layer4": (427, 32)}
    assert list(rfs) == list(expected)
    for name, (size, stride) in expected.items():
        assert geometry(rfs[name]) == ((size,) * 2, (stride,) * 2, ((size - 1) // 2,) * 2), name
    assert rfs["layer4"].output_shape == (7, 7)
    assert rfs["layer4"].grown  # 427 does not fit in 224: probed larger, same geometry
    assert rfest.compute(model, (3, 224, 224)).is_global  # the classifier sees everything


def test_dilated_convolutions() -> None:
    # k3 d2 p2: r5 first-2; k3 d2 p2: r9 first-4; k3 d4 p4: r17 first-8.
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, dilation=2, padding=2),
        nn.Conv2d(4, 4, 3, dilation=2, padding=2),
        nn.Conv2d(4, 4, 3, dilation=4, padding=4),
    )
    assert geometry(rfest.compute(net, (2, 40, 40))) == ((17, 17), (1, 1), (8, 8))


def test_dilation_with_holes_in_the_support() -> None:
    # One k3 d3 conv: the field {0, 3, 6} has holes; size 7, padding 0.
    net = nn.Conv1d(1, 1, 3, dilation=3)
    assert geometry(rfest.compute(net, (1, 20))) == ((7,), (1,), (0,))


def test_dilated_max_pool_is_averaged_over_the_same_window() -> None:
    # MaxPool k3 s1 d2: support {0, 2, 4}, r5; then conv k3 p1: r7 first-1.
    net = nn.Sequential(nn.MaxPool2d(3, stride=1, dilation=2), nn.Conv2d(1, 1, 3, padding=1))
    assert geometry(rfest.compute(net, (1, 16, 16))) == ((7, 7), (1, 1), (1, 1))


def test_non_square_kernel_stride_and_input() -> None:
    # axis 0: k3 s1 p1 -> r3 first-1; k5 s2 p2 -> r7 first-3 j2.
    # axis 1: k7 s2 p0 -> r7 j2 first0; k1 s1 p0 -> r7 j2.
    net = nn.Sequential(
        nn.Conv2d(3, 8, (3, 7), stride=(1, 2), padding=(1, 0)),
        nn.ReLU(),
        nn.Conv2d(8, 8, (5, 1), stride=(2, 1), padding=(2, 0)),
    )
    rf = rfest.compute(net, (3, 40, 57))
    assert geometry(rf) == ((7, 7), (2, 2), (3, 0))
    assert rf.output_shape == (20, 26)


def test_same_padding_with_an_even_kernel() -> None:
    # PyTorch 'same', k4: 3 pixels of padding, 1 before and 2 after; two layers: r7 first-2.
    net = nn.Sequential(nn.Conv2d(1, 2, 4, padding="same"), nn.Conv2d(2, 2, 4, padding="same"))
    assert geometry(rfest.compute(net, (1, 30, 30))) == ((7, 7), (1, 1), (2, 2))


class Branches(nn.Module):
    """stem k3 p1; concat(1x1, 5x5 p2) -> union r7 first-3; add(k3 s2 p1 on it, 1x1 s2 on stem)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.narrow = nn.Conv2d(4, 4, 1)
        self.wide = nn.Conv2d(4, 4, 5, padding=2)
        self.down = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(4, 4, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        mixed = torch.cat([self.narrow(x), F.gelu(self.wide(x))], dim=1)
        return self.down(mixed) + self.skip(x)


def test_branches_with_concat_and_add() -> None:
    # down: r7 + 2 = 9, first -3 - 1 = -4, j2; skip: r3 first-1 -> union r9 padding 4.
    rf = rfest.compute(Branches(), (3, 33, 33))
    assert geometry(rf) == ((9, 9), (2, 2), (4, 4))
    mixed = rfest.compute(Branches(), (3, 33, 33), output="wide")
    assert geometry(mixed) == ((7, 7), (1, 1), (3, 3))


def test_conv1d_network() -> None:
    # k5 s2 p1: r5 j2 first-1; k3 d2 p0: r5 + 2*2*2 = 13.
    net = nn.Sequential(nn.Conv1d(2, 4, 5, stride=2, padding=1), nn.Conv1d(4, 4, 3, dilation=2))
    rf = rfest.compute(net, (2, 50))
    assert geometry(rf) == ((13,), (2,), (1,))
    assert rf.offset == (5.0,)


def test_conv3d_network() -> None:
    # axis0: k3 p1 -> r3 first-1; pool2 -> r4 j2; k3 p1 -> r8 first-3.
    # axis1: k5 s2 p2 -> r5 j2 first-2; pool2 -> r7 j4; k3 p1 -> r15 first-6.
    # axis2: k1 s2 -> r1 j2; pool2 -> r3 j4; k3 p1 -> r11 first-4.
    net = nn.Sequential(
        nn.Conv3d(1, 2, (3, 5, 1), stride=(1, 2, 2), padding=(1, 2, 0)),
        nn.MaxPool3d(2),
        nn.Conv3d(2, 2, 3, padding=1),
    )
    rf = rfest.compute(net, (1, 12, 20, 24))
    assert geometry(rf) == ((8, 15, 11), (2, 4, 4), (3, 6, 4))


def test_field_larger_than_the_input() -> None:
    # four k3 s2 p1: r = 1 + 2 * (1 + 2 + 4 + 8) = 31, j16, padding 15; input only 12.
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, stride=2, padding=1) for _ in range(4)])
    rf = rfest.compute(net, (1, 12, 12))
    assert geometry(rf) == ((31, 31), (16, 16), (15, 15))
    assert rf.input_shape == (12, 12) and rf.grown
    assert all((p - 12) % 16 == 0 for p in rf.probe_shape)


def test_nearest_upsampling_is_not_uniform() -> None:
    # two k3 s2 p1: r7 j4; upsampling by 2 pairs units with the same field.
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
        nn.Upsample(scale_factor=2, mode="nearest"),
    )
    with pytest.warns(rfest.NonUniformWarning):
        rf = rfest.compute(net, (1, 64, 64))
    assert not rf.uniform
    assert rf.size == (7, 7)


def test_transposed_convolution_is_not_uniform() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1), nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1)
    )
    with pytest.warns(rfest.NonUniformWarning):
        assert not rfest.compute(net, (1, 20, 20)).uniform


class MeanHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize(
    "net",
    [
        pytest.param(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), id="gap-module"),
        pytest.param(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1)), id="gmp-module"),
        pytest.param(MeanHead(), id="functional-mean"),
    ],
)
def test_global_pooling_is_global(net: nn.Module) -> None:
    rf = rfest.compute(net, (3, 32, 32))
    assert rf.is_global
    assert rf.size is None


class SqueezeExcite(nn.Module):
    """conv k3 p1, gated by sigmoid(fc(mean)): with x = 0 the gate path is invisible."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.sigmoid(self.fc(y.mean(dim=(2, 3), keepdim=True)))


def test_squeeze_excite_is_global() -> None:
    assert rfest.compute(SqueezeExcite(), (2, 24, 24), max_input_size=256).is_global


class Functional(nn.Module):
    """Everything written as functions in forward(); field: k3 p1, max3/2 p1, k3 p1."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.a(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        x = F.silu(x).clamp(0, 6)
        x = F.layer_norm(x, x.shape[1:])
        x = torch.tanh(self.b(x)) * torch.sigmoid(x)
        return x.relu()


def test_functional_activations_and_pooling_are_linearized() -> None:
    # a: r3 first-1; max k3 s2 p1: r5 j2 first-2; b: r9 first-4.
    assert geometry(rfest.compute(Functional(), (1, 31, 31))) == ((9, 9), (2, 2), (4, 4))


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)])
def test_normalisation_acts_as_identity(norm: nn.Module) -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm, nn.Conv2d(4, 4, 3, padding=1))
    net.train()
    assert geometry(rfest.compute(net, (1, 20, 20))) == ((5, 5), (1, 1), (2, 2))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_that_fold_or_wrap(mode: str) -> None:
    # three k3 p1 layers: r7 padding 3 whatever the padding fills in.
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1, padding_mode=mode) for _ in range(3)])
    assert geometry(rfest.compute(net, (1, 24, 24))) == ((7, 7), (1, 1), (3, 3))


def test_layer_scale_of_one_in_a_million_does_not_hide_the_edge() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=1) for _ in range(4))
            self.gamma = nn.Parameter(torch.full((1, 1, 1, 1), 1e-6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in self.convs:
                x = x + self.gamma * conv(x)
            return x

    assert geometry(rfest.compute(Scaled(), (1, 24, 24))) == ((9, 9), (1, 1), (4, 4))


def test_same_result_in_float32() -> None:
    rf = rfest.compute(receptivefield_readme_net(), (3, 96, 96), dtype="float32")
    assert geometry(rf) == ((34, 34), (4, 4), (0, 0))


def test_real_model_without_linearization_on_a_linear_net() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.Conv2d(2, 2, 3, stride=2, padding=1))
    rf = rfest.compute(net, (1, 30, 30), linearize=False)
    assert geometry(rf) == ((7, 7), (2, 2), (3, 3))
