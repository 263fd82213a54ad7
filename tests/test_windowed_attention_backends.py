"""Windowed attention on Keras and Flax: a two-stage Swin-like model, bounded fields.

Mirrors ``tests/test_torch_swin.py`` with ``keras.layers.MultiHeadAttention`` and
``nnx.MultiHeadAttention``: 4 x 4 patches, windows of 4 x 4 tokens, a block in windows,
a block in windows shifted by 2 (masked where the roll brings regions together), a 2 x 2
patch merging, and the same again. Truth: the real model's gradient support (random
weights, random positive input), unit by unit along the middle row and column, widest
among units clear of the border; by hand, 16, 32, 64 and 96 pixels (see the torch test).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pytest

import rfest

WINDOW, SHIFT = 4, 2
HAND = (16, 32, 64, 96)
Array = Any


def region_ids(hp: int, wp: int) -> np.ndarray:
    """Swin's shifted-window regions: tokens of different regions do not attend."""
    region = np.zeros((hp, wp), np.int32)
    cuts = (slice(0, -WINDOW), slice(-WINDOW, -SHIFT), slice(-SHIFT, None))
    for k, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
        region[rows, cols] = k
    return region


def same_region(hp: int, wp: int) -> np.ndarray:
    """(windows, T, T): True where two tokens of a shifted window may attend."""
    ids = region_ids(hp, wp).reshape(hp // WINDOW, WINDOW, wp // WINDOW, WINDOW)
    ids = ids.transpose(0, 2, 1, 3).reshape(-1, WINDOW * WINDOW)
    return ids[:, :, None] == ids[:, None, :]


def widest(gradient: Any, out_shape: tuple[int, int], n: int) -> tuple[int, int]:
    """Widest support per axis among units of the middle row/column clear of the border;
    ``gradient(unit)`` is the (n, n) map of the real model."""
    result = []
    for axis in (0, 1):
        extents = []
        for i in range(out_shape[axis]):
            unit = [out_shape[0] // 2, out_shape[1] // 2]
            unit[axis] = i
            profile = np.asarray(gradient(tuple(unit))).sum(axis=1 - axis)
            (seen,) = np.nonzero(profile)
            if seen[0] > 0 and seen[-1] < n - 1:
                extents.append(int(seen[-1] - seen[0] + 1))
        result.append(max(extents))
    return result[0], result[1]


def check(
    model: Any, output: str, shape: tuple[int, int, int], truth: tuple[int, int], **options: Any
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rf = rfest.compute(model, shape, output=output, max_input_size=256, **options)
    assert any(issubclass(w.category, rfest.NonUniformWarning) for w in caught)
    assert not rf.is_global and not rf.uniform
    assert rf.size == truth


# --- Flax NNX ------------------------------------------------------------------------


def flax_swin() -> Any:
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    jnp = jax.numpy

    def pad_to(x: Array, multiple: int) -> Array:
        h, w = x.shape[1:3]
        return jnp.pad(x, ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0)))

    def windows(x: Array) -> Array:
        n, h, w, c = x.shape
        x = x.reshape(n, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, WINDOW * WINDOW, c)

    class SwinBlock(nnx.Module):
        def __init__(self, dim: int, shift: int, rngs: nnx.Rngs) -> None:
            self.shift = shift
            self.norm1, self.norm2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=2, in_features=dim, decode=False, rngs=rngs
            )
            self.fc1 = nnx.Linear(dim, 2 * dim, rngs=rngs)
            self.fc2 = nnx.Linear(2 * dim, dim, rngs=rngs)

        def __call__(self, x: Array) -> Array:
            h, w = x.shape[1:3]
            t = pad_to(x, WINDOW)
            n, hp, wp, c = t.shape
            a = self.norm1(t)
            if self.shift:
                a = jnp.roll(a, (-self.shift, -self.shift), (1, 2))
            mask = None
            if self.shift:
                mask = jnp.tile(jnp.asarray(same_region(hp, wp))[:, None], (n, 1, 1, 1))
            out = self.attn(windows(a), mask=mask)
            out = out.reshape(n, hp // WINDOW, wp // WINDOW, WINDOW, WINDOW, c)
            out = out.transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, c)
            if self.shift:
                out = jnp.roll(out, (self.shift, self.shift), (1, 2))
            t = t + out
            t = t + self.fc2(nnx.gelu(self.fc1(self.norm2(t))))
            return t[:, :h, :w]

    class Merge(nnx.Module):
        def __init__(self, dim: int, rngs: nnx.Rngs) -> None:
            self.reduce = nnx.Linear(4 * dim, 2 * dim, rngs=rngs)

        def __call__(self, x: Array) -> Array:
            x = pad_to(x, 2)
            parts = [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]
            return self.reduce(jnp.concatenate(parts, -1))

    class Swin(nnx.Module):
        def __init__(self) -> None:
            rngs, dim = nnx.Rngs(6), 8
            self.embed = nnx.Conv(3, dim, (4, 4), strides=(4, 4), padding="VALID", rngs=rngs)
            self.blocks = nnx.List(
                [
                    SwinBlock(dim, 0, rngs),
                    SwinBlock(dim, SHIFT, rngs),
                    nnx.Sequential(Merge(dim, rngs), SwinBlock(2 * dim, 0, rngs)),
                    SwinBlock(2 * dim, SHIFT, rngs),
                ]
            )

        def __call__(self, x: Array, upto: int = 3) -> Array:
            x = self.embed(x)
            for block in self.blocks[: upto + 1]:
                x = block(x)
            return x

    return Swin()


@pytest.mark.jax
@pytest.mark.parametrize("block", [1, 3])  # the shifted blocks: masks, merging
def test_flax_windowed_attention_is_bounded_and_exact(block: int) -> None:
    jax = pytest.importorskip("jax")
    model = flax_swin()
    n = 160
    x = jax.numpy.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (1, n, n, 3)), "float32")
    y, pullback = jax.vjp(lambda v: model(v, block), x)
    out_shape = y.shape[1:3]
    back = jax.jit(lambda cotangent: pullback(cotangent)[0])

    def gradient(unit: tuple[int, int]) -> Array:
        cotangent = jax.numpy.zeros_like(y).at[0, unit[0], unit[1]].set(1.0)
        return np.asarray(back(cotangent))[0].sum(axis=-1)

    truth = widest(gradient, out_shape, n)
    assert truth == (HAND[block],) * 2
    check(model, f"blocks/{block}", (64, 64, 3), truth)


# --- Keras ---------------------------------------------------------------------------


@functools.cache
def _keras_layers() -> tuple[type, type]:
    import keras
    from keras import layers as L
    from keras import ops

    def pad_to(x: Any, multiple: int) -> Any:
        h, w = x.shape[1:3]
        return ops.pad(x, ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0)))

    @keras.saving.register_keras_serializable(package="rfest_tests")
    class SwinBlock(keras.layers.Layer):
        """Windows as an axis of their own, ``(N, windows, T, C)``: attention over T only."""

        def __init__(self, dim: int, shift: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.dim, self.shift = dim, shift
            self.norm1, self.norm2 = L.LayerNormalization(), L.LayerNormalization()
            self.attn = L.MultiHeadAttention(num_heads=2, key_dim=dim // 2, attention_axes=(2,))
            self.fc1 = L.Dense(2 * dim, activation="gelu")
            self.fc2 = L.Dense(dim)

        def call(self, x: Any) -> Any:
            h, w = x.shape[1:3]
            t = pad_to(x, WINDOW)
            hp, wp, c = t.shape[1:]
            a = self.norm1(t)
            if self.shift:
                a = ops.roll(a, (-self.shift, -self.shift), (1, 2))
            a = ops.reshape(a, (-1, hp // WINDOW, WINDOW, wp // WINDOW, WINDOW, c))
            a = ops.reshape(ops.transpose(a, (0, 1, 3, 2, 4, 5)), (-1, hp * wp // 16, 16, c))
            mask = None
            if self.shift:
                mask = ops.convert_to_tensor(same_region(hp, wp)[None])
            out = self.attn(a, a, attention_mask=mask)
            out = ops.reshape(out, (-1, hp // WINDOW, wp // WINDOW, WINDOW, WINDOW, c))
            out = ops.reshape(ops.transpose(out, (0, 1, 3, 2, 4, 5)), (-1, hp, wp, c))
            if self.shift:
                out = ops.roll(out, (self.shift, self.shift), (1, 2))
            t = t + out
            t = t + self.fc2(self.fc1(self.norm2(t)))
            return t[:, :h, :w]

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "dim": self.dim, "shift": self.shift}

    @keras.saving.register_keras_serializable(package="rfest_tests")
    class Merge(keras.layers.Layer):
        def __init__(self, dim: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.dim = dim
            self.reduce = L.Dense(2 * dim)

        def call(self, x: Any) -> Any:
            x = pad_to(x, 2)
            parts = [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]
            return self.reduce(ops.concatenate(parts, -1))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "dim": self.dim}

    return SwinBlock, Merge


def keras_swin(input_shape: tuple[int, ...]) -> Any:
    """A build function, ``f(input_shape) -> Model`` (the windows need static sizes)."""
    import keras

    SwinBlock, Merge = _keras_layers()
    keras.utils.set_random_seed(6)
    dim = 8
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Conv2D(dim, 4, strides=4)(inputs)
    x = SwinBlock(dim, 0, name="block0")(x)
    x = SwinBlock(dim, SHIFT, name="block1")(x)
    x = SwinBlock(2 * dim, 0, name="block2")(Merge(dim, name="merge")(x))
    x = SwinBlock(2 * dim, SHIFT, name="block3")(x)
    return keras.Model(inputs, x)


@pytest.mark.keras
@pytest.mark.parametrize("block", [1, 3])  # the shifted blocks: masks, merging
def test_keras_windowed_attention_is_bounded_and_exact(block: int) -> None:
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("truth computed with TensorFlow only")
    import tensorflow as tf

    n = 160
    model = keras_swin((n, n, 3))
    sub = keras.Model(model.inputs, model.get_layer(f"block{block}").output)
    x = tf.constant(np.random.default_rng(0).uniform(0.5, 1.5, (1, n, n, 3)), tf.float32)
    out_shape = tuple(sub.output.shape[1:3])

    def gradient(unit: tuple[int, int]) -> Array:
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(sub(x)[0, unit[0], unit[1]])
        return tape.gradient(total, x).numpy()[0].sum(axis=-1)

    truth = widest(gradient, out_shape, n)
    assert truth == (HAND[block],) * 2
    check(keras_swin, f"block{block}", (64, 64, 3), truth, backend="keras")
