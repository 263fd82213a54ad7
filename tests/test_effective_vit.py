"""Effective receptive field of token outputs: a tiny vision transformer written here.

A 4x4-pixel patch embedding (conv, stride 4) on a 32 x 32 input gives an 8 x 8 patch grid,
64 tokens, row-major; an optional class token goes first. Patch token (r, c) is token
``prefix + 8 r + c``, and the patch embedding alone makes it see pixels 4r .. 4r + 3 x
4c .. 4c + 3 exactly.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import Tensor, nn  # noqa: E402

from rfest import TheoreticalFieldWarning, effective  # noqa: E402
from rfest._errors import InputShapeError, OutputNotFoundError  # noqa: E402

pytestmark = pytest.mark.torch


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, 64, dim)


class TinyViT(nn.Module):
    """Patch embedding, optional class token and learned position embedding, one encoder
    layer. Pre-norm (as ViTs are): a post-norm layer ends in LayerNorm, whose channel sum
    is constant (docs/effective.md)."""

    def __init__(self, class_token: bool, learned_pos: bool = True) -> None:
        super().__init__()
        torch.manual_seed(5)
        dim = 16
        self.embed = PatchEmbed(dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if class_token else None
        tokens = 64 + int(class_token)
        self.pos = nn.Parameter(0.1 * torch.randn(1, tokens, dim)) if learned_pos else None
        self.encoder = nn.TransformerEncoderLayer(
            dim,
            nhead=2,
            dim_feedforward=32,
            dropout=0.1,
            batch_first=True,
            norm_first=True,
        )
        self.head = nn.Linear(dim, 10)

    def tokens(self, x: Tensor) -> Tensor:
        t = self.embed(x)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        return self.encoder(t if self.pos is None else t + self.pos)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.tokens(x)[:, 0])


def token_heatmap(model: TinyViT, images: np.ndarray, token: int) -> np.ndarray:
    """Direct autograd: mean over images of sum_c |d (sum of token's channels) / d x|."""
    ref = copy.deepcopy(model).double().eval()
    x = torch.tensor(images, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ref.tokens(x)[:, token].sum(), x)
    return grad.abs().sum(dim=1).mean(dim=0).numpy()


@pytest.mark.parametrize(
    ("class_token", "training"),
    [
        (True, False),
        (False, False),
        (True, True),
    ],
)
def test_token_output_maps_back_onto_the_patch_grid(class_token: bool, training: bool) -> None:
    # Centre unit of the 8 x 8 grid: (3, 3), token prefix + 8 * 3 + 3 = prefix + 27.
    # Reference: direct autograd on an eval() float64 copy (inference mode, no dropout).
    vit = TinyViT(class_token)
    vit.train(training)
    prefix = int(class_token)
    images = np.random.default_rng(2).standard_normal((6, 3, 32, 32))
    erf = effective(
        vit,
        output="encoder",
        inputs=images,
        token_grid=(8, 8),
        prefix_tokens=prefix,
        theoretical=False,
    )
    assert erf.output_shape == (8, 8) and erf.units == ((3, 3),)
    assert erf.options["token_grid"] == (8, 8) and erf.options["prefix_tokens"] == prefix
    np.testing.assert_allclose(
        erf.heatmap, token_heatmap(vit, images, prefix + 27), rtol=1e-10, atol=1e-14
    )
    # Attention mixes every patch into the token: no pixel is without influence.
    assert np.all(erf.heatmap > 0)
    assert vit.training == training


def test_patch_embedding_tokens_see_exactly_their_patch() -> None:
    # Token of patch (3, 5) after the embedding alone: pixels 12..15 x 20..23, nothing else;
    # the theoretical field of the grid is size 4, stride 4 (a 16-pixel box), and the 90 %
    # area cannot exceed it.
    vit = TinyViT(class_token=False)
    erf = effective(vit, (3, 32, 32), output="embed", token_grid=(8, 8), units=(3, 5))
    support = np.argwhere(erf.heatmap > 0)
    assert support.min(axis=0).tolist() == [12, 20] and support.max(axis=0).tolist() == [15, 23]
    assert erf.receptive_field is not None
    assert erf.receptive_field.size == (4, 4) and erf.receptive_field.stride == (4, 4)
    assert erf.rf_box == ((12, 16), (20, 24))
    assert erf.area_ratio[0.9] is not None and erf.area_ratio[0.9] <= 1.0


def test_fixed_size_vit_has_a_global_theoretical_field() -> None:
    # The learned position embedding has 65 rows: only 32 x 32 inputs work. Every token
    # sees every patch through attention, so the field at the one size the model takes is
    # global (tests/test_fixed_size_models.py checks that against autograd), and the
    # effective field is compared with the whole input.
    vit = TinyViT(class_token=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TheoreticalFieldWarning)
        erf = effective(
            vit,
            (3, 32, 32),
            output="encoder",
            token_grid=(8, 8),
            prefix_tokens=1,
            num_images=2,
        )
    assert erf.receptive_field is not None and erf.receptive_field.is_global
    ratio = erf.area_ratio[0.9]
    assert ratio is not None and 0 < ratio <= 1.0


def test_token_layout_errors() -> None:
    vit = TinyViT(class_token=True)
    with pytest.raises(InputShapeError, match="65"):
        effective(vit, (3, 32, 32), output="encoder", token_grid=(8, 8), num_images=1)
    with pytest.raises(InputShapeError, match="token_grid"):
        effective(vit, (3, 32, 32), output="encoder", num_images=1)
    with pytest.raises(OutputNotFoundError, match="encoder"):
        effective(vit, (3, 32, 32), output="encodr", token_grid=(8, 8), prefix_tokens=1)
