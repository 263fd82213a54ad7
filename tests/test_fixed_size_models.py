"""Models that run at one input size only (a position table fixes the token count).

rfest grows the probe to see a field whole; a model that refuses every larger size cannot
be grown. Where every unit already sees the whole input at the size the model takes, that
is the answer there (``is_global``); a local field that fits is measured as usual. Truth
comes from autograd of the real model (random weights, float64).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402

import rfest  # noqa: E402

pytestmark = pytest.mark.torch


class FixedTokenViT(nn.Module):
    """A ViT with a class token and a learned position table for exactly 16 patches."""

    def __init__(self, width: int = 16, patch: int = 8, tokens: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens + 1, width))
        layer = nn.TransformerEncoderLayer(width, 2, 32, 0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x)
        b, c, h, w = t.shape
        t = torch.cat([self.cls.expand(b, -1, -1), t.flatten(2).transpose(1, 2)], 1)
        t = self.encoder(t + self.position)  # any other token count raises here
        return t[:, 1:].transpose(1, 2).reshape(b, c, h, w)


class FixedSizeCNN(nn.Module):
    """Two k3 convolutions (field 5, stride 1) behind a check that the input is 32x32."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3))

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != (32, 32):
            raise ValueError(f"this model takes 32x32 inputs, not {tuple(x.shape[2:])}")
        return self.convs(x)


def dependence(model: nn.Module, unit: tuple[int, int]) -> np.ndarray:
    torch.manual_seed(0)
    x = torch.rand((1, 3, 32, 32), dtype=torch.float64, requires_grad=True)
    y = model.double()(x)
    (grad,) = torch.autograd.grad(y[0, :, unit[0], unit[1]].sum(), x)
    model.float()
    return grad.abs().sum(dim=1)[0].numpy() > 0


def test_vit_with_a_fixed_position_table_is_global_at_its_size() -> None:
    torch.manual_seed(0)
    model = FixedTokenViT().eval()
    for unit in [(0, 0), (3, 3), (1, 2)]:
        assert dependence(model, unit).all()  # the truth: every token sees every pixel
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, 40, 32))
    rf = rfest.compute(model, (3, 32, 32))
    assert rf.is_global and rf.size is None


def test_fixed_size_cnn_keeps_its_local_field() -> None:
    torch.manual_seed(0)
    model = FixedSizeCNN().eval()
    rows, cols = np.nonzero(dependence(model, (0, 0)))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 4, 0, 4)
    rf = rfest.compute(model, (3, 32, 32))
    assert not rf.is_global
    assert (rf.size, rf.stride, rf.padding) == ((5, 5), (1, 1), (0, 0))
