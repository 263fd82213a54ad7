"""Decoders in PyTorch: the exact field of every output unit, checked against brute force.

Each network's every output unit along every axis is compared with the supports
`decoder_oracle` finds by raising one input slice at a time in a positive-weight float64
copy of the network. Periods and steps named in comments are worked by hand.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import rfest  # noqa: E402
from decoder_oracle import check_every_unit  # noqa: E402

pytestmark = pytest.mark.torch


def forward_of(model: nn.Module, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                p.fill_(1.0 / p[0].numel())
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)

    def forward(x: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(x)[:, None].expand(-1, channels, *x.shape[1:])
        with torch.no_grad():
            return net(inputs.contiguous()).sum(dim=1).numpy()  # type: ignore[no-any-return]

    return forward


def measure(model: nn.Module, shape: tuple[int, ...]) -> rfest.ReceptiveField:
    with pytest.warns(rfest.NonUniformWarning, match="differ"):
        rf = rfest.compute(model, shape)
    assert not rf.uniform
    check_every_unit(rf, forward_of(model, shape[0]))
    return rf


def conv(i: int, o: int, k: int = 3, **kw: int) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, padding=kw.pop("padding", k // 2), **kw)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("factor", [2, 4])
def test_upsampling(mode: str, factor: int) -> None:
    # conv s2 (j2), then up x factor: the pattern repeats every `factor` units, 2 px on.
    net = nn.Sequential(
        conv(1, 2, stride=2), nn.Upsample(scale_factor=factor, mode=mode), conv(2, 1)
    )
    rf = measure(net, (1, 24, 20))
    assert rf.period == (factor, factor) and rf.period_step == (2, 2)
    assert rf.stride_fraction == (Fraction(2, factor),) * 2


@pytest.mark.parametrize(
    ("kernel", "padding", "output_padding"),
    [(2, 0, 0), (3, 0, 0), (3, 1, 0), (3, 1, 1), (4, 1, 0), (4, 2, 1)],
)
def test_transposed_convolution(kernel: int, padding: int, output_padding: int) -> None:
    # stride 2 after a stride-1 conv: period 2, one input pixel on.
    net = nn.Sequential(
        conv(1, 2),
        nn.ConvTranspose2d(2, 1, kernel, 2, padding=padding, output_padding=output_padding),
    )
    rf = measure(net, (1, 18, 16))
    assert rf.period == (2, 2) and rf.period_step == (1, 1)
    # Phase r of output unit u = 2k + r gathers inputs i with 0 <= u + padding - 2i < kernel.
    for axis in range(2):
        phases = rf.phases[axis]  # type: ignore[index]
        assert phases is not None
        for r, phase in enumerate(phases):
            taps = [i for i in range(-4, 5) if 0 <= r + padding - 2 * i < kernel]
            assert (phase.start, phase.size) == (taps[0] - 1, taps[-1] - taps[0] + 3)


def test_pixel_shuffle() -> None:
    # conv k3 p1 to 4 channels, shuffle by 2: units 2k and 2k+1 both see k-1..k+1.
    net = nn.Sequential(conv(1, 4), nn.PixelShuffle(2))
    rf = measure(net, (1, 16, 16))
    assert rf.period == (2, 2) and rf.period_step == (1, 1)
    assert all(p == rfest.Phase(3, -1) for axis in rf.phases for p in axis)  # type: ignore[union-attr]


class UNet(nn.Module):
    """Two levels down (average pooling), two up (transposed k2 s2), skips concatenated."""

    def __init__(self, c: int = 2) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(conv(i, o), nn.ReLU(), conv(o, o), nn.ReLU())

        self.e1, self.e2, self.e3 = block(1, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.pool = nn.AvgPool2d(2)
        self.u2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.d2 = block(4 * c, 2 * c)
        self.u1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.d1 = block(2 * c, c)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(self.pool(a))
        d = self.d2(torch.cat([self.u2(self.e3(self.pool(b))), b], 1))
        return self.head(self.d1(torch.cat([self.u1(d), a], 1)))


def test_unet_output_layer() -> None:
    # Total downsampling 4, back up by 4: fields repeat every 4 units, 4 px on.
    rf = measure(UNet(), (1, 64, 56))
    assert rf.period == (4, 4) and rf.period_step == (4, 4)


class FPN(nn.Module):
    """Bottom-up c2 (stride 4), c3 (8), c4 (16); top-down by nearest x2 with lateral 1x1s."""

    def __init__(self, c: int = 2) -> None:
        super().__init__()
        self.c2 = nn.Sequential(conv(1, c, stride=2), conv(c, c, stride=2))
        self.c3, self.c4 = conv(c, c, stride=2), conv(c, c, stride=2)
        self.l2, self.l3, self.l4 = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.p2 = conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.c2(x)
        c3 = self.c3(c2)
        p4 = self.l4(self.c4(c3))
        p3 = self.l3(c3) + F.interpolate(p4, scale_factor=2, mode="nearest")
        p2 = self.l2(c2) + F.interpolate(p3, scale_factor=2, mode="nearest")
        return self.p2(p2)  # type: ignore[no-any-return]


def test_fpn_p2() -> None:
    # P2 at stride 4 mixes P4 (stride 16) upsampled x4: 4 units repeat, 16 px on.
    rf = measure(FPN(), (1, 96, 80))
    assert rf.period == (4, 4) and rf.period_step == (16, 16)
    assert rf.stride_fraction == (4, 4)


def test_dcgan_generator() -> None:
    # Four transposed k4 s2 p1 with batch norm, ReLU and tanh: x16, one input pixel on.
    layers: list[nn.Module] = []
    widths = [8, 8, 4, 4, 3]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.ConvTranspose2d(a, b, 4, 2, 1))
        layers += [nn.BatchNorm2d(b), nn.ReLU()] if i < 3 else [nn.Tanh()]
    rf = measure(nn.Sequential(*layers), (8, 6, 6))
    assert rf.period == (16, 16) and rf.period_step == (1, 1)


def test_3d() -> None:
    net = nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1),
        nn.ConvTranspose3d(2, 1, 3, stride=2, padding=1, output_padding=1),
        nn.Upsample(scale_factor=(1, 2, 1)),
    )
    rf = measure(net, (1, 9, 8, 10))
    assert rf.period == (2, 4, 2) and rf.period_step == (1, 1, 1)


def test_1d() -> None:
    net = nn.Sequential(
        nn.Conv1d(1, 2, 3, padding=1),
        nn.ConvTranspose1d(2, 1, 4, stride=2, padding=1),
        nn.Upsample(scale_factor=2, mode="linear"),
    )
    rf = measure(net, (1, 30))
    assert rf.period == (4,) and rf.period_step == (1,)


def test_uniform_axis_beside_a_periodic_one() -> None:
    # Upsampling along the columns only: rows stay uniform (3 / 1 / 1).
    net = nn.Sequential(conv(1, 1), nn.Upsample(scale_factor=(1, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rfest.NonUniformWarning)
        rf = rfest.compute(net, (1, 12, 12))
    assert rf.period == (1, 2) and rf.period_step == (1, 1)
    assert rf.pattern is not None and rf.pattern[0] == rfest.PhasePattern(
        1, 1, (rfest.Phase(3, -1),)
    )
    assert (rf.size[0], rf.stride[0], rf.padding[0]) == (3, 1, 1)  # type: ignore[index]
    check_every_unit(rf, forward_of(net, 1))
