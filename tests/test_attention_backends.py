"""A small ViT through Keras (``keras.layers.MultiHeadAttention``) and Flax
(``nnx.MultiHeadAttention``): every token sees every patch, so the field is global, and
the linearized pass must not overflow on the way.

Truth: the real model's gradient of one token (random weights, random positive input) is
non-zero on every input pixel.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import rfest

DEPTH = 6  # deep enough that unscaled attention products overflow float32 and float64


@pytest.mark.keras
def test_keras_vit_is_global() -> None:
    keras = pytest.importorskip("keras")
    from keras import layers as L

    ToGrid = _to_grid()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    grid = L.Conv2D(16, 4, strides=4)(inputs)
    tokens = L.Reshape((-1, 16))(grid)
    for _ in range(DEPTH):
        normed = L.LayerNormalization()(tokens)
        tokens = tokens + L.MultiHeadAttention(num_heads=2, key_dim=8)(normed, normed)
        tokens = tokens + L.Dense(16)(
            L.Dense(32, activation="gelu")(L.LayerNormalization()(tokens))
        )
    model = keras.Model(inputs, ToGrid(name="grid")(grid, tokens))

    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 32, 32, 3)).astype("float32")
    for token in ((0, 0), (7, 7)):
        assert (keras_token_gradient(model, x, token) != 0).all()
    assert rfest.compute(model, max_input_size=128).is_global


@functools.cache
def _to_grid() -> type:
    """Tokens back on the grid of the patch embedding (registered: rfest rebuilds the model
    from its config)."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="rfest_tests")
    class ToGrid(keras.layers.Layer):
        def call(self, grid: object, tokens: object) -> object:
            return ops.reshape(tokens, ops.shape(grid))

    return ToGrid


def keras_token_gradient(model: object, x: np.ndarray, token: tuple[int, int]) -> np.ndarray:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = model(xt)[0, token[0], token[1]]
            total = tf.reduce_sum(y)
        return tape.gradient(total, xt).numpy().sum(axis=-1)
    pytest.skip(f"truth computed with TensorFlow only, not {backend}")


@pytest.mark.jax
def test_flax_nnx_vit_is_global() -> None:
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    import jax.numpy as jnp

    class Block(nnx.Module):
        def __init__(self, rngs: object) -> None:
            self.norm1 = nnx.LayerNorm(16, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False, rngs=rngs)
            self.norm2 = nnx.LayerNorm(16, rngs=rngs)
            self.fc1 = nnx.Linear(16, 32, rngs=rngs)
            self.fc2 = nnx.Linear(32, 16, rngs=rngs)

        def __call__(self, t: object) -> object:
            t = t + self.attn(self.norm1(t))
            return t + self.fc2(nnx.gelu(self.fc1(self.norm2(t))))

    class ViT(nnx.Module):
        def __init__(self, rngs: object) -> None:
            self.embed = nnx.Conv(3, 16, (4, 4), strides=(4, 4), padding="VALID", rngs=rngs)
            self.blocks = nnx.List([Block(rngs) for _ in range(DEPTH)])

        def __call__(self, x: object) -> object:
            grid = self.embed(x)
            n, h, w, c = grid.shape
            t = grid.reshape(n, h * w, c)
            for block in self.blocks:
                t = block(t)
            return t.reshape(n, h, w, c)

    model = ViT(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (1, 32, 32, 3)))
    for token in ((0, 0), (7, 7)):
        grad = jax.grad(lambda v, t=token: model(v)[0, t[0], t[1]].sum())(x)
        assert (np.asarray(grad).sum(axis=-1) != 0).all()
    assert rfest.compute(model, (32, 32, 3), max_input_size=128).is_global


@pytest.mark.jax
def test_flax_gated_attention_and_sixteen_squeeze_excite_blocks_are_global() -> None:
    # Sixteen squeeze-excite gates, then attention gated by a sigmoid of its own input:
    # linearized with constant weights the products go like x ** (2 ** 16) unless they
    # are rescaled. Truth: the real gradient of a unit is non-zero on every pixel.
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    import jax.numpy as jnp

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.squeeze = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(16)])
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
            self.gate = nnx.Linear(8, 8, rngs=rngs)

        def __call__(self, x: object) -> object:
            y = self.stem(x)
            for layer in self.squeeze:
                y = y * nnx.sigmoid(layer(y.mean(axis=(1, 2), keepdims=True)))
            n, h, w, c = y.shape
            t = y.reshape(n, h * w, c)
            t = self.attn(t) * nnx.sigmoid(self.gate(t))
            return t.reshape(n, h, w, c)

    model = Net(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (1, 16, 16, 3)))
    for unit in ((0, 0), (8, 5)):
        grad = jax.grad(lambda v, u=unit: model(v)[0, u[0], u[1]].sum())(x)
        assert (np.asarray(grad).sum(axis=-1) != 0).all()
    assert rfest.compute(model, (16, 16, 3), max_input_size=64).is_global


@pytest.mark.keras
def test_keras_gated_attention_and_sixteen_squeeze_excite_blocks_are_global() -> None:
    keras = pytest.importorskip("keras")
    from keras import layers as L

    ToGrid = _to_grid()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    y = L.Conv2D(8, 3)(inputs)
    for _ in range(16):
        gate = L.Dense(8, activation="sigmoid")(L.GlobalAveragePooling2D(keepdims=True)(y))
        y = L.Multiply()([y, gate])
    tokens = L.Reshape((-1, 8))(y)
    attended = L.MultiHeadAttention(num_heads=2, key_dim=4)(tokens, tokens)
    gated = L.Multiply()([attended, L.Dense(8, activation="sigmoid")(tokens)])
    model = keras.Model(inputs, ToGrid(name="grid")(y, gated))

    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 16, 16, 3)).astype("float32")
    for token in ((0, 0), (8, 5)):
        assert (keras_token_gradient(model, x, token) != 0).all()
    assert rfest.compute(model, max_input_size=64).is_global
