"""The channel-collapsed linearized pass computes exactly what the full-width pass does.

Every model here is measured twice through the torch backend, narrowed (the default,
one channel wherever all channels agree) and with ``narrow=False`` (every channel
computed): the gradient maps must have the same support and the same values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rfest  # noqa: E402
from rfest_torch._provider import TorchGradientProvider  # noqa: E402
from test_torch_swin import TinySwin  # noqa: E402
from torch_models import ResNet50  # noqa: E402


class Lambda(nn.Module):
    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, 2)
        self.excite = nn.Conv2d(2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x.mean((2, 3)))
        return x * torch.sigmoid(self.excite(s[:, :, None, None]))


class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], 1)


class InPlaceResidual(nn.Module):
    """``out.add_(...)`` as a statement: the write itself must reach every channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 5, padding=2, dilation=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.a(x)
        out.add_(self.b(x))
        out.mul_(0.5)
        return out


class InPlaceWithMixedChannels(nn.Module):
    """An in-place add of a tensor whose channels differ: cannot stay collapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 5, padding=2)
        self.c = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.a(x)
        out += torch.cat([self.b(x), self.c(x)], 1)
        return out


class ChannelDifference(nn.Module):
    """Input channels with gradients of opposite sign: their magnitudes must add up."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, :1] - 2 * x[:, 1:2])


class Normalized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3, 0.4]).view(3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv((x - self.mean) / self.std)


class TokenAttention(nn.Module):
    """Tokens ``(N, T, C)`` through attention written three ways: ``nn.MultiheadAttention``
    inside ``nn.TransformerEncoderLayer``; heads split by a reshape and
    ``F.scaled_dot_product_attention`` (timm); ``nn.MultiheadAttention`` called with a
    banded boolean mask, a key padding mask and its averaged weights used; then a
    ``tokens @ weight`` over the features."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, dim = kind, 8
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.layer = nn.TransformerEncoderLayer(dim, 2, 16, batch_first=True, norm_first=True)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mha = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.composite = nn.MultiheadAttention(dim, 2, batch_first=True, add_bias_kv=True)
        self.mix = nn.Parameter(torch.rand(dim, dim))
        self.cls = nn.Parameter(torch.rand(1, 1, dim))
        self.positions = nn.Parameter(torch.rand(1, 64, dim))
        self.layer_scale = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        n, c, h, w = t.shape
        tokens = t.flatten(2).transpose(1, 2)
        if self.kind == "encoder layer":
            tokens = self.layer(self.layer(tokens))
        elif self.kind == "class token":  # timm's ViT: a class token, learned positions
            cls = self.cls.expand(n, -1, -1)
            tokens = torch.cat([cls, tokens], 1) + self.positions[:, : h * w + 1]
            tokens = self.layer(tokens)[:, 1:] * self.layer_scale
        elif self.kind == "composite":  # bias_k: PyTorch's composite, heads in the batch
            tokens = tokens + self.composite(tokens, tokens, tokens, need_weights=False)[0]
        elif self.kind == "heads by reshape":
            qkv = self.qkv(tokens).reshape(n, h * w, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
            tokens = tokens + self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        else:
            i = torch.arange(h * w)
            far = (i[:, None] - i[None, :]).abs() > w  # a band: the token's row and the next
            padding = torch.zeros(n, h * w, dtype=torch.bool)
            padding[:, -1] = True
            out, weights = self.mha(tokens, tokens, tokens, attn_mask=far, key_padding_mask=padding)
            tokens = out + weights @ tokens
        tokens = tokens @ self.mix  # a product over the features, with a weight
        return tokens.transpose(1, 2).reshape(n, c, h, w)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    # name: (model, input shape, stays collapsed through the whole pass)
    "resnet50": (lambda: ResNet50(), (3, 64, 48), True),
    "max pool, reflect padding, ceil mode": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(6, 6, 3, dilation=2),
        ),
        (3, 29, 31),
        True,
    ),
    "grouped after concat, depthwise, channel shuffle": (
        lambda: nn.Sequential(
            DenseLayer(3, 5),
            nn.Conv2d(8, 8, 3, padding=1, groups=4),
            Lambda(channel_shuffle),
            nn.Conv2d(8, 16, 3, padding=1, groups=8),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 4, 1),
        ),
        (3, 20, 24),
        True,
    ),
    "squeeze-excite and a linear head": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2),
            SqueezeExcite(8),
            nn.Conv2d(8, 8, 3),
        ),
        (3, 21, 21),
        True,
    ),
    "transposed, upsampled, pixel shuffle": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2),
            nn.ConvTranspose2d(8, 8, 3, stride=2, groups=2, output_padding=1),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(8, 8, 3),
            nn.PixelShuffle(2),
            nn.Conv2d(2, 3, 3),
        ),
        (3, 16, 18),
        True,
    ),
    "spatial concat and flatten head": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3),
            Lambda(lambda x: torch.cat([x, F.pad(x, (0, 0, 2, 0))], 2)),
            Lambda(lambda x: x.view(x.shape[0], -1)),  # merges channels with rows: a copy
            nn.Linear(4 * 22 * 14, 5),
        ),
        (3, 12, 16),
        True,
    ),
    "in-place residual": (InPlaceResidual, (4, 20, 20), True),
    "tokens through nn.TransformerEncoderLayer": (
        lambda: TokenAttention("encoder layer"),
        (3, 12, 16),
        True,
    ),
    "tokens with a class token, learned positions and layer scale": (
        lambda: TokenAttention("class token"),
        (3, 12, 16),
        True,
    ),
    "tokens, nn.MultiheadAttention's own composite (bias_k)": (
        lambda: TokenAttention("composite"),
        (3, 12, 16),
        True,
    ),
    "tokens, heads split by a reshape, causal attention": (
        lambda: TokenAttention("heads by reshape"),
        (3, 12, 16),
        True,
    ),
    "tokens, banded and padding masks, attention weights used": (
        lambda: TokenAttention("masks and weights"),
        (3, 12, 16),
        True,
    ),
    "windowed and shifted-window attention (Swin-like)": (TinySwin, (3, 40, 36), True),
    "in-place add of mixed channels": (InPlaceWithMixedChannels, (3, 20, 20), False),
    "input channels of opposite sign": (ChannelDifference, (2, 15, 15), True),
    "normalization constants": (Normalized, (3, 17, 17), True),
    "conv1d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2),
            Lambda(lambda x: x.unsqueeze(2).mean(2)),
            nn.Conv1d(4, 3, 5, dilation=2),
        ),
        (2, 40),
        True,
    ),
    "conv3d": (
        lambda: nn.Sequential(
            nn.Conv3d(2, 4, (1, 3, 3), stride=(1, 2, 1)),
            nn.MaxPool3d(2),
            nn.Conv3d(4, 3, 3, padding=1, padding_mode="circular"),
        ),
        (2, 8, 14, 12),
        True,
    ),
}


def providers(
    build: Callable[[], nn.Module], shape: tuple[int, ...]
) -> tuple[TorchGradientProvider, TorchGradientProvider]:
    torch.manual_seed(0)
    model = build().eval()
    return (
        TorchGradientProvider(model, input_shape=shape, dtype="float64"),
        TorchGradientProvider(model, input_shape=shape, dtype="float64", narrow=False),
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_narrowed_maps_equal_full_width_maps(name: str) -> None:
    build, shape, stays_collapsed = MODELS[name]
    narrowed, full = providers(build, shape)
    spatial = shape[1:]
    out_shape = full.output_shapes(spatial)["output"]
    assert narrowed.output_shapes(spatial)["output"] == out_shape
    units = sorted({tuple(0 for _ in out_shape), tuple(m // 2 for m in out_shape)})
    units.append(tuple(m - 1 for m in out_shape))
    got = narrowed.gradient_maps(spatial, "output", units)
    expected = full.gradient_maps(spatial, "output", units)
    assert np.array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0)
    assert narrowed._collapse is stays_collapsed


def test_narrowing_turns_itself_off_for_good_and_stays_exact() -> None:
    # InPlaceWithMixedChannels: a: k3 pad 1, b: k5 pad 2 -> 5 / 1 / 2 through the sum.
    model = InPlaceWithMixedChannels().eval()
    rf = rfest.compute(model, (3, 20, 20))
    assert (rf.size, rf.stride, rf.padding) == ((5, 5), (1, 1), (2, 2))


def test_an_input_too_small_for_the_model_does_not_turn_narrowing_off() -> None:
    # Five 'valid' k7 convolutions need 31 pixels: the 16-pixel thin probe fails both
    # ways, which says nothing against narrowing. r = 1 + 5 * 6 = 31.
    model = nn.Sequential(nn.Conv2d(3, 4, 7), *[nn.Conv2d(4, 4, 7) for _ in range(4)])
    narrowed = TorchGradientProvider(model, input_shape=(3, 80, 80))
    with pytest.raises(rfest.ModelCallError):
        narrowed.output_shapes((16, 80))
    assert narrowed._collapse
    rf = rfest.compute(model, (3, 80, 80))
    assert (rf.size, rf.stride, rf.padding) == ((31, 31), (1, 1), (0, 0))


def test_narrow_option_is_checked() -> None:
    with pytest.raises(rfest.OptionError, match="narrow"):
        rfest.compute(nn.Conv2d(1, 1, 3), (1, 8, 8), narrow="yes")


def test_narrowed_resnet50_gives_the_published_answer_in_float32_and_float64() -> None:
    # Worked by hand in test_torch_networks: layer4 of ResNet-50 at 224 is 427 / 32 / 213.
    torch.manual_seed(0)
    model = ResNet50().eval()
    for dtype in ("float32", "float64"):
        rf = rfest.compute(model, (3, 224, 224), output="layer4", dtype=dtype)
        assert (rf.size, rf.stride, rf.padding) == ((427, 427), (32, 32), (213, 213))
