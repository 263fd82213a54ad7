"""Attention, gates and squeeze-excite chains on the torch backend: never NaN, exact.

Truth comes from the real model: random weights, a random positive float64 input, and
autograd of one output unit; where that gradient is non-zero is the unit's field. Every
model is written here (no torchvision, no timm).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import rfest  # noqa: E402
from rfest_torch._provider import TorchGradientProvider  # noqa: E402

pytestmark = pytest.mark.torch


def true_support(model: nn.Module, shape: tuple[int, ...], unit: tuple[int, ...]) -> np.ndarray:
    """Input pixels (summed over channels) on which output ``unit`` of the real model depends."""
    torch.manual_seed(0)
    x = (0.5 + torch.rand((1, *shape), dtype=torch.float64)).requires_grad_(True)
    model = model.double().eval()
    y = model(x)
    (grad,) = torch.autograd.grad(y[(0, slice(None), *unit)].sum(), x)
    model.float()
    return grad.abs().sum(dim=1)[0].numpy() > 0


def box_mask(rf: rfest.ReceptiveField, unit: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(rf.input_shape, dtype=bool)
    (r0, r1), (c0, c1) = rf.box(unit)  # type: ignore[misc]
    mask[max(r0, 0) : r1, max(c0, 0) : c1] = True
    return mask


class Attention(nn.Module):
    """Multi-head self-attention: ``F.scaled_dot_product_attention``, or written out as
    timm's and torchvision's Swin do (``q @ k.T``, softmax, ``@ v``)."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale (tiny factors, as in CaiT/DeiT-III)."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.gamma * self.attn(self.norm1(x))
        return x + self.gamma * self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """4x4 patches, ``depth`` blocks, tokens back on their grid (N, C, H/4, W/4)."""

    def __init__(self, depth: int, kind: str = "sdpa") -> None:
        super().__init__()
        torch.manual_seed(1)
        dim = 16
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        blocks: list[nn.Module]
        if kind == "nn":
            blocks = [
                nn.TransformerEncoderLayer(dim, 2, 32, batch_first=True, norm_first=True)
                for _ in range(depth)
            ]
        else:
            blocks = [Block(dim, 2, fused=kind == "sdpa") for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x)
        n, c, h, w = t.shape
        t = self.blocks(t.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("kind", ["sdpa", "explicit", "nn"])
def test_a_deep_vit_is_global_and_finite(kind: str) -> None:
    model = TinyViT(depth=8, kind=kind)
    for unit in ((0, 0), (3, 5), (7, 7)):
        assert true_support(model, (3, 32, 32), unit).all()
    provider = TorchGradientProvider(model, input_shape=(3, 32, 32))
    maps = provider.gradient_maps((32, 32), "output", [(0, 0), (7, 7)])
    assert np.isfinite(maps).all() and (maps > 0).all()
    assert maps.min() > 1e-12 and maps.max() < 1e12  # near 1, far from under/overflow
    rf = rfest.compute(model, input_shape=(3, 32, 32), max_input_size=64)
    assert rf.is_global


class GatedAttention(nn.Module):
    """A conv stem, then attention gated by a sigmoid of its own input (gated attention
    units, GAU-style), then a 3x3 conv: global."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gate = nn.Linear(8, 8)
        self.head = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        t = self.stem(x)
        n, c, h, w = t.shape
        tokens = t.flatten(2).transpose(1, 2)
        attended, _ = self.attn(tokens, tokens, tokens)
        gated = attended * torch.sigmoid(self.gate(tokens))
        return self.head(gated.transpose(1, 2).reshape(n, c, h, w))


def test_gated_attention_is_global() -> None:
    model = GatedAttention()
    assert true_support(model, (3, 12, 12), (0, 0)).all()
    provider = TorchGradientProvider(model, input_shape=(3, 12, 12))
    maps = provider.gradient_maps((12, 12), "output", [(0, 0), (11, 11)])
    assert np.isfinite(maps).all() and (maps > 0).all()
    assert rfest.compute(model, input_shape=(3, 12, 12), max_input_size=48).is_global


class GatedConvChain(nn.Module):
    """Sixteen gated convolutions ``tanh(conv_a x) * sigmoid(conv_b x)`` (WaveNet, PixelCNN):
    a bounded field, 1 + 16 * 2 = 33, from products of two functions of the input."""

    def __init__(self, layers: int = 16) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(layers))
        self.b = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(layers))
        self.stem = nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for a, b in zip(self.a, self.b, strict=True):
            x = torch.tanh(a(x)) * torch.sigmoid(b(x))
        return x


def test_sixteen_chained_gates_give_the_exact_bounded_field() -> None:
    model = GatedConvChain()
    rf = rfest.compute(model, input_shape=(3, 48, 48))
    assert not rf.is_global and rf.uniform
    for unit in ((24, 24), (30, 17)):
        truth = true_support(model, (3, 48, 48), unit)
        assert np.array_equal(truth, box_mask(rf, unit))
    assert rf.size == (33, 33)  # the recurrence: 16 layers of 3x3 add 2 each


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 2, 1)
        self.fc2 = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SqueezeExciteChain(nn.Module):
    """Sixteen conv + squeeze-excite blocks (EfficientNet's gates): every unit sees all."""

    def __init__(self, blocks: int = 16) -> None:
        super().__init__()
        torch.manual_seed(4)
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
        for _ in range(blocks):
            layers += [nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.SiLU(), SqueezeExcite(8)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def test_sixteen_squeeze_excite_blocks_are_global_and_do_not_underflow() -> None:
    model = SqueezeExciteChain()
    assert true_support(model, (3, 20, 20), (0, 0)).all()
    provider = TorchGradientProvider(model, input_shape=(3, 20, 20))
    maps = provider.gradient_maps((20, 20), "output", [(0, 0), (10, 10)])
    assert np.isfinite(maps).all() and (maps > 0).all()
    assert math.isfinite(float(maps.max())) and maps.min() > 1e-30
    assert rfest.compute(model, input_shape=(3, 20, 20), max_input_size=256).is_global


def test_the_model_is_left_as_it_was() -> None:
    model = TinyViT(depth=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rfest.compute(model, input_shape=(3, 32, 32), max_input_size=256)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
