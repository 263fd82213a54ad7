"""Windowed attention (a two-stage Swin-like model written here): bounded, periodic fields.

Window partitions are not translation-equivariant: every token of a window sees the same
window, so units differ with their phase in the window (``uniform=False``) and rfest
reports the widest unit's size. The truth is a brute-force gradient support of the real
model (random weights, float64), unit by unit along the middle row and column; the hand
recurrence agrees: with 4 x 4 patches and windows of 4 tokens (16 pixels), block 1 sees
its window (16), block 2's shifted window joins two of them (32), after a 2 x 2 patch
merging block 3's window of 4 stage-2 tokens joins the block-2 fields of 8 stage-1
tokens (64), and block 4's shifted window two of those (96).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import rfest  # noqa: E402

pytestmark = pytest.mark.torch

WINDOW = 4
BLOCKS = ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
HAND = {"blocks.0": 16, "blocks.1": 32, "blocks.2": 64, "blocks.3": 96}


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    """(N, C, H, W) padded at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))


class SwinBlock(nn.Module):
    """(Shifted-)window attention and an MLP, on (N, C, H, W) like a conv layer."""

    def __init__(self, dim: int, shift: int, masked: float) -> None:
        super().__init__()
        self.shift, self.masked, self.heads = shift, masked, 2
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _mask(self, hp: int, wp: int, device: torch.device) -> Tensor:
        """Swin's shifted-window mask: tokens of different regions do not attend."""
        region = torch.zeros(hp, wp, device=device)
        cuts = (slice(0, -WINDOW), slice(-WINDOW, -self.shift), slice(-self.shift, None))
        for k, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
            region[rows, cols] = k
        windows = self._windows(region[None, :, :, None])[..., 0]  # (nW, w*w)
        different = windows[:, :, None] != windows[:, None, :]
        return torch.zeros(different.shape, device=device).masked_fill(different, self.masked)

    def _windows(self, x: Tensor) -> Tensor:
        n, h, w, c = x.shape
        x = x.view(n, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, WINDOW * WINDOW, c)

    def _attend(self, x: Tensor) -> Tensor:
        n, h, w, c = x.shape
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
        tokens = self._windows(x)
        b, t, _ = tokens.shape
        qkv = self.qkv(tokens).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None
        if self.shift:
            per_window = self._mask(h, w, x.device)
            mask = per_window.repeat(n, 1, 1)[:, None]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(b, t, c))
        out = out.view(n, h // WINDOW, w // WINDOW, WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(n, h, w, c)
        if self.shift:
            out = torch.roll(out, (self.shift, self.shift), (1, 2))
        return out

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        t = _pad_to(x, WINDOW).permute(0, 2, 3, 1)
        t = t + self._attend(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)[..., :h, :w]


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(4 * dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = _pad_to(x, 2)
        parts = [x[..., i::2, j::2] for i in (0, 1) for j in (0, 1)]
        return self.reduce(torch.cat(parts, 1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TinySwin(nn.Module):
    """Patch embedding 4 x 4, two stages of (window, shifted window) blocks."""

    def __init__(self, masked: float = -math.inf) -> None:
        super().__init__()
        torch.manual_seed(6)
        dim = 8
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(
            SwinBlock(dim, 0, masked),
            SwinBlock(dim, WINDOW // 2, masked),
            nn.Sequential(PatchMerging(dim), SwinBlock(2 * dim, 0, masked)),
            SwinBlock(2 * dim, WINDOW // 2, masked),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.embed(x))


def brute_force_widest(model: nn.Module, output: str, n: int) -> tuple[int, int]:
    """Widest support, per axis, among units whose support touches neither border."""
    module = dict(model.named_modules())[output]
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, a, out: captured.append(out))
    torch.manual_seed(0)
    x = (0.5 + torch.rand((1, 3, n, n), dtype=torch.float64)).requires_grad_(True)
    model.double().eval()
    try:
        model(x)
    finally:
        handle.remove()
    y = captured[0]
    widest = []
    for axis in (0, 1):
        extents = []
        for i in range(y.shape[2 + axis]):
            unit = [y.shape[2] // 2, y.shape[3] // 2]
            unit[axis] = i
            (grad,) = torch.autograd.grad(y[0, :, unit[0], unit[1]].sum(), x, retain_graph=True)
            profile = grad.abs().sum(dim=(0, 1)).sum(dim=1 - axis).numpy()
            (seen,) = np.nonzero(profile)
            if seen[0] > 0 and seen[-1] < n - 1:
                extents.append(int(seen[-1] - seen[0] + 1))
        widest.append(max(extents))
    model.float()
    return widest[0], widest[1]


@pytest.mark.parametrize(
    "output",
    list(BLOCKS),
)
def test_windowed_attention_is_bounded_periodic_and_exact(output: str) -> None:
    truth = brute_force_widest(TinySwin(), output, 160)
    assert truth == (HAND[output],) * 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rf = rfest.compute(TinySwin(), input_shape=(3, 64, 64), output=output, max_input_size=256)
    assert any(issubclass(w.category, rfest.NonUniformWarning) for w in caught)
    assert not rf.is_global
    assert not rf.uniform  # every token of a window sees the same window: no equivariance
    assert rf.size == truth


def test_swin_masks_of_minus_100_read_as_masked() -> None:
    # torchvision and timm mask with -100, not -inf: exp(-100) is a real but negligible
    # weight, and rfest counts it as masked, giving the field of the -inf model.
    with pytest.warns(rfest.NonUniformWarning, match="largest seen"):
        rf = rfest.compute(
            TinySwin(masked=-100.0), input_shape=(3, 64, 64), output="blocks.1", max_input_size=256
        )
    assert rf.size == (HAND["blocks.1"],) * 2 and not rf.uniform


class SwinClassifier(nn.Module):
    """TinySwin, then global average pooling and a 1 x 1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.swin = TinySwin()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.swin(x)))


def test_report_shows_the_field_growing_block_by_block_until_global() -> None:
    # Hand values (module docstring): the 4 x 4 patch embedding sees 4 pixels, the blocks
    # 16, 32, 64, 96 (windows repeat every 4 tokens: 16 px in stage 1, 32 in stage 2),
    # and the pooled head sees everything.
    names = ["swin.embed", *(f"swin.{b}" for b in BLOCKS), "pool", "head"]
    report = rfest.report(SwinClassifier(), (3, 64, 64), layers=names, max_input_size=256)
    records = {r.name: r for r in report}
    assert records["swin.embed"].size == (4, 4) and records["swin.embed"].uniform
    for block in BLOCKS:
        record = records[f"swin.{block}"]
        assert record.size == (HAND[block],) * 2 and record.status == "non-uniform"
        assert record.period == (WINDOW, WINDOW)
    assert records["swin.blocks.1"].period_step == (16, 16)
    assert records["swin.blocks.3"].period_step == (32, 32)
    assert records["pool"].is_global and records["head"].is_global
