"""Masked attention on the JAX backend: an input-independent ``where`` mask restricts the field.

Flax's attention masks by ``jnp.where(mask, scores, finfo.min)``; a neighbourhood mask
(each patch token attends to the 3 x 3 tokens around it, built with ``jnp.arange``) gives
a bounded field. Truth: the real model's gradient support (random weights, random
positive input), unit by unit, against ``rf.box``; by hand, 4-pixel patches and two
blocks of radius-1 attention reach 2 tokens each way: 20 pixels, stride 4, padding 8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import jax.numpy as jnp  # noqa: E402

import rfest  # noqa: E402
import rfest_jax  # noqa: E402

pytestmark = pytest.mark.jax

Array = Any
DIM = 8


@pytest.fixture(autouse=True)
def jax_backend() -> None:
    if "jax" not in rfest.available_backends():
        rfest.register_backend("jax", rfest_jax.provider, replace=True)


def neighbourhood(h: int, w: int, radius: int) -> Array:
    """(1, 1, T, T) mask of tokens within ``radius`` rows and columns of each other."""
    index = jnp.arange(h * w)
    rows, cols = index // w, index % w
    near = (jnp.abs(rows[:, None] - rows[None, :]) <= radius) & (
        jnp.abs(cols[:, None] - cols[None, :]) <= radius
    )
    return near[None, None]


class LocalBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.norm1, self.norm2 = nnx.LayerNorm(DIM, rngs=rngs), nnx.LayerNorm(DIM, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=DIM, decode=False, rngs=rngs)
        self.fc1 = nnx.Linear(DIM, 2 * DIM, rngs=rngs)
        self.fc2 = nnx.Linear(2 * DIM, DIM, rngs=rngs)

    def __call__(self, t: Array, mask: Array) -> Array:
        t = t + self.attn(self.norm1(t), mask=mask)
        return t + self.fc2(nnx.gelu(self.fc1(self.norm2(t))))


class LocalAttentionNet(nnx.Module):
    """4 x 4 patches, then ``depth`` neighbourhood-attention blocks; tokens back on the grid."""

    def __init__(self, depth: int = 2, causal: bool = False) -> None:
        rngs = nnx.Rngs(0)
        self.causal = causal
        self.embed = nnx.Conv(3, DIM, (4, 4), strides=(4, 4), padding="VALID", rngs=rngs)
        self.blocks = nnx.List([LocalBlock(rngs) for _ in range(depth)])

    def __call__(self, x: Array) -> Array:
        grid = self.embed(x)
        n, h, w, c = grid.shape
        mask = neighbourhood(h, w, 1)
        if self.causal:
            index = jnp.arange(h * w)
            mask = mask & (index[:, None] >= index[None, :])
        t = grid.reshape(n, h * w, c)
        for block in self.blocks:
            t = block(t, mask)
        return t.reshape(n, h, w, c)


def true_support(model: LocalAttentionNet, shape: tuple[int, ...], unit: tuple[int, int]):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (1, *shape)), jnp.float32)
    grad = jax.grad(lambda v: model(v)[0, unit[0], unit[1]].sum())(x)
    return np.asarray(grad).sum(axis=-1)[0] != 0


def box_mask(rf: rfest.ReceptiveField, unit: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(rf.input_shape, dtype=bool)
    (r0, r1), (c0, c1) = rf.box(unit)  # type: ignore[misc]
    mask[max(r0, 0) : r1, max(c0, 0) : c1] = True
    return mask


def test_neighbourhood_attention_has_the_exact_bounded_field() -> None:
    model = LocalAttentionNet()
    shape = (48, 48, 3)
    rf = rfest.compute(model, shape)
    assert not rf.is_global
    assert (rf.size, rf.stride, rf.padding) == ((20, 20), (4, 4), (8, 8))  # by hand
    for unit in ((0, 0), (0, 5), (5, 5), (6, 11), (11, 11)):  # border units clipped
        assert np.array_equal(true_support(model, shape, unit), box_mask(rf, unit)), unit


def test_causal_and_neighbourhood_masks_together() -> None:
    # Causal over the row-major token order on top of the 3 x 3 neighbourhood: token
    # (r, c) sees the row above (c - 1 .. c + 1), its own row up to c; after two blocks
    # the field of an interior unit reaches 2 rows up and 2 columns either side, but no
    # row below: rows 4r - 8 .. 4r + 3 (12 px), columns 4c - 8 .. 4c + 11 (20 px); its
    # own row only to the left, so the support is not the whole box.
    model = LocalAttentionNet(causal=True)
    shape = (48, 48, 3)
    support = true_support(model, shape, (6, 6))
    rows, cols = np.nonzero(support)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 27, 16, 35)
    rf = rfest.compute(model, shape)
    assert (rf.size, rf.stride, rf.padding) == ((12, 20), (4, 4), (8, 8))
    for unit in ((6, 6), (3, 9), (11, 5)):  # the field is not a rectangle: its extents
        rows, cols = np.nonzero(true_support(model, shape, unit))
        assert rf.box(unit) == ((rows.min(), rows.max() + 1), (cols.min(), cols.max() + 1))
