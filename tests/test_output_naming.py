"""A layer the user named ``"output"`` is that layer; the model's own output (``output=None``)
never shadows it. Worked answer: a 3-tap conv named "output" (field 3), then a 5-tap conv
(field 3 + 5 - 1 = 7) as the model's output, stride 1, no padding.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import rfest

LAYER, MODEL = (3, 3), (7, 7)


def _check(model: Any, shape: tuple[int, ...], backend: str) -> None:
    layer = rfest.compute(model, shape, backend=backend, output="output")
    whole = rfest.compute(model, shape, backend=backend)
    both = rfest.compute(model, shape, backend=backend, output=["output"])
    assert (layer.size, whole.size, both["output"].size) == (LAYER, MODEL, LAYER)


@pytest.mark.torch
def test_torch_layer_named_output() -> None:
    pytest.importorskip("torch")
    from torch import nn

    net = nn.Sequential()
    net.add_module("output", nn.Conv2d(1, 1, 3))
    net.add_module("head", nn.Conv2d(1, 1, 5))
    _check(net, (1, 16, 16), "torch")


@pytest.mark.keras
def test_keras_layer_named_output() -> None:
    pytest.importorskip("keras")
    if importlib.util.find_spec("rfest_keras") is None:  # pragma: no cover
        pytest.skip("rfest_keras missing")
    import keras

    net = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(1, 3, name="output"),
            keras.layers.Conv2D(1, 5, name="head"),
        ]
    )
    _check(net, (16, 16, 1), "keras")


@pytest.mark.jax
def test_jax_layer_named_output() -> None:
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Conv(1, (5, 5), padding="VALID", name="head")(
                nn.Conv(1, (3, 3), padding="VALID", name="output")(x)
            )

    module = Net()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 1)))
    _check((module, variables), (16, 16, 1), "jax")
