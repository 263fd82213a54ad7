"""How each first-party backend builds the reference networks of `rfest.testing`.

Imported by tests/test_conformance.py only where the framework is installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rfest.testing import Conv, Layer


class TorchBackend:
    name = "torch"

    def build(self, layers: Sequence[Layer], channels: int) -> Any:
        import torch
        from torch import nn

        torch.manual_seed(0)
        net = nn.Sequential()
        for k, layer in enumerate(layers):
            if isinstance(layer, Conv):
                module: nn.Module = nn.Conv2d(
                    channels,
                    channels,
                    layer.kernel,
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                )
            elif layer.max:
                module = nn.MaxPool2d(layer.kernel, layer.stride)
            else:
                module = nn.AvgPool2d(layer.kernel, layer.stride)
            net.add_module(f"layer{k}", module)
        return net

    def input_shape(self, spatial: tuple[int, int], channels: int) -> tuple[int, ...]:
        return (channels, *spatial)

    def state(self, model: Any) -> Mapping[str, Any]:
        state: dict[str, Any] = {
            name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()
        }
        state["training"] = tuple(m.training for m in model.modules())
        state["requires_grad"] = tuple(p.requires_grad for p in model.parameters())
        state["hooks"] = sum(len(m._forward_hooks) for m in model.modules())
        return state


class KerasBackend:
    name = "keras"

    def build(self, layers: Sequence[Layer], channels: int) -> Any:
        import keras

        keras.utils.set_random_seed(0)
        stack: list[Any] = [keras.Input((None, None, channels))]
        for k, layer in enumerate(layers):
            if isinstance(layer, Conv):
                if layer.padding:
                    stack.append(keras.layers.ZeroPadding2D(layer.padding, name=f"pad{k}"))
                stack.append(
                    keras.layers.Conv2D(
                        channels,
                        layer.kernel,
                        strides=layer.stride,
                        dilation_rate=layer.dilation,
                        name=f"layer{k}",
                    )
                )
            else:
                pool = keras.layers.MaxPooling2D if layer.max else keras.layers.AveragePooling2D
                stack.append(pool(layer.kernel, layer.stride, name=f"layer{k}"))
        return keras.Sequential(stack)

    def input_shape(self, spatial: tuple[int, int], channels: int) -> tuple[int, ...]:
        return (*spatial, channels)

    def state(self, model: Any) -> Mapping[str, Any]:
        state: dict[str, Any] = {w.path: np.array(w.numpy(), copy=True) for w in model.weights}
        state["trainable"] = tuple(layer.trainable for layer in model.layers)
        return state


class JaxBackend:
    name = "jax"

    def build(self, layers: Sequence[Layer], channels: int) -> Any:
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        class PoolLayer(nn.Module):
            kernel: int
            stride: int
            max: bool

            def __call__(self, x: jax.Array) -> jax.Array:
                pool = nn.max_pool if self.max else nn.avg_pool
                return pool(x, (self.kernel,) * 2, (self.stride,) * 2)

        class Net(nn.Module):
            spec: tuple[Layer, ...]

            @nn.compact
            def __call__(self, x: jax.Array) -> jax.Array:
                for k, layer in enumerate(self.spec):
                    if isinstance(layer, Conv):
                        x = nn.Conv(
                            channels,
                            (layer.kernel,) * 2,
                            (layer.stride,) * 2,
                            padding=[(layer.padding, layer.padding)] * 2,
                            kernel_dilation=(layer.dilation,) * 2,
                            name=f"layer{k}",
                        )(x)
                    else:
                        x = PoolLayer(layer.kernel, layer.stride, layer.max, name=f"layer{k}")(x)
                return x

        module = Net(tuple(layers))
        variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, channels)))
        return module, variables

    def input_shape(self, spatial: tuple[int, int], channels: int) -> tuple[int, ...]:
        return (*spatial, channels)

    def state(self, model: Any) -> Mapping[str, Any]:
        import jax

        leaves = jax.tree_util.tree_flatten_with_path(model[1])[0]
        return {jax.tree_util.keystr(path): np.array(leaf, copy=True) for path, leaf in leaves}


class SampleBackend:
    """The toy plugin of tests/sample_plugin, installed through a real entry point."""

    name = "rfest_sample"

    def build(self, layers: Sequence[Layer], channels: int) -> Any:
        import rfest_sample as toy

        rng = np.random.default_rng(0)
        net = toy.Net()
        for k, layer in enumerate(layers):
            if isinstance(layer, Conv):
                weight = rng.standard_normal((layer.kernel, layer.kernel))
                net.layers[f"layer{k}"] = toy.Conv(
                    weight, layer.stride, layer.padding, layer.dilation
                )
            elif layer.max:
                net.layers[f"layer{k}"] = toy.MaxPool(layer.kernel, layer.stride)
            else:
                net.layers[f"layer{k}"] = toy.AvgPool(layer.kernel, layer.stride)
        return net

    def input_shape(self, spatial: tuple[int, int], channels: int) -> tuple[int, ...]:
        return (channels, *spatial)

    def state(self, model: Any) -> Mapping[str, Any]:
        return {
            name: np.array(layer.weight, copy=True)
            for name, layer in model.layers.items()
            if hasattr(layer, "weight")
        } | {"layers": tuple(model.layers)}
