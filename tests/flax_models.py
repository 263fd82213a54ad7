"""Reference Flax networks (Linen and NNX) and plain JAX functions for the tests.

Each carries the receptive field worked by hand from the layer recurrences (per axis, from
r = 1, j = 1, first = 0): ``first -= p * j``; ``r += (k - 1) * d * j``; ``j *= s``;
``padding = -first``. The layouts and names follow ``torch_models.py`` so that one answer
serves both frameworks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

Array = Any


class ReadmeNetLinen(nn.Module):
    """The ``receptivefield`` README network: size 34, stride 4, padding 0 (see examples).

    ``width`` 32 gives its channels (32, 32, 64, 64, 128, 128); any width, same geometry.
    """

    width: int = 32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.width
        x = nn.relu(nn.Conv(w, (5, 5), padding="VALID", name="conv1")(x))
        x = nn.relu(nn.Conv(w, (3, 3), padding="VALID", name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(2 * w, (3, 3), padding="VALID", name="conv3")(x))
        x = nn.relu(nn.Conv(2 * w, (3, 3), padding="VALID", name="conv4")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(4 * w, (3, 3), padding="VALID", name="conv5")(x))
        return nn.Conv(4 * w, (3, 3), padding="VALID", name="feature_grid")(x)


class ReadmeNetNNX(nnx.Module):
    """The same network as an NNX module; the last layer is ``feature_grid``."""

    def __init__(self, channels: int = 3, *, rngs: nnx.Rngs) -> None:
        def conv(cin: int, cout: int, k: int) -> nnx.Conv:
            return nnx.Conv(cin, cout, (k, k), padding="VALID", rngs=rngs)

        self.conv1 = conv(channels, 32, 5)
        self.conv2 = conv(32, 32, 3)
        self.conv3 = conv(32, 64, 3)
        self.conv4 = conv(64, 64, 3)
        self.conv5 = conv(64, 128, 3)
        self.feature_grid = conv(128, 128, 3)

    def __call__(self, x: Array) -> Array:
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.conv4(nnx.relu(self.conv3(x))))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.feature_grid(nnx.relu(self.conv5(x)))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_planes = self.planes * 4
        identity = x
        y = nn.Conv(self.planes, (1, 1), use_bias=False, name="conv1")(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(y))
        y = nn.Conv(
            self.planes,
            (3, 3),
            strides=self.stride,
            padding=((1, 1), (1, 1)),
            use_bias=False,
            name="conv2",
        )(y)
        y = nn.relu(nn.BatchNorm(use_running_average=True, name="bn2")(y))
        y = nn.Conv(out_planes, (1, 1), use_bias=False, name="conv3")(y)
        y = nn.BatchNorm(use_running_average=True, name="bn3")(y)
        if self.stride != 1 or x.shape[-1] != out_planes:
            identity = nn.Conv(
                out_planes, (1, 1), strides=self.stride, use_bias=False, name="downsample"
            )(x)
            identity = nn.BatchNorm(use_running_average=True, name="downsample_bn")(identity)
        return nn.relu(y + identity)


class Stage(nn.Module):
    planes: int
    blocks: int
    stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = Bottleneck(self.planes, self.stride, name="0")(x)
        for k in range(1, self.blocks):
            x = Bottleneck(self.planes, name=str(k))(x)
        return x


class ResNet50(nn.Module):
    """ResNet-50 in torchvision's layout and names (layer1..layer4, fc); ``width`` 64 is it.

    A narrower ``width`` keeps every kernel, stride and padding: the same geometry.
    """

    width: int = 64
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.width
        x = nn.Conv(w, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (planes, blocks, stride) in enumerate(
            ((w, 3, 1), (2 * w, 4, 2), (4 * w, 6, 2), (8 * w, 3, 2))
        ):
            x = Stage(planes, blocks, stride, name=f"layer{i + 1}")(x)
        return nn.Dense(self.num_classes, name="fc")(x.mean(axis=(1, 2)))


class NNXBottleneck(nnx.Module):
    """:class:`Bottleneck` as an NNX module (stride on the 3x3, torchvision's layout)."""

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs) -> None:
        out = planes * 4
        self.conv1 = nnx.Conv(cin, planes, (1, 1), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(planes, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(
            planes, planes, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False,
            rngs=rngs,
        )  # fmt: skip
        self.bn2 = nnx.BatchNorm(planes, use_running_average=True, rngs=rngs)
        self.conv3 = nnx.Conv(planes, out, (1, 1), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(out, use_running_average=True, rngs=rngs)
        self.downsample = (
            nnx.Conv(cin, out, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            if stride != 1 or cin != out
            else None
        )

    def __call__(self, x: Array) -> Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(y + identity)


class NNXResNet50(nnx.Module):
    """:class:`ResNet50` as an NNX module: ``layer1``..``layer4`` are lists of bottlenecks."""

    def __init__(self, width: int = 64, *, rngs: nnx.Rngs) -> None:
        w = width
        self.conv1 = nnx.Conv(
            3, w, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False, rngs=rngs
        )
        self.bn1 = nnx.BatchNorm(w, use_running_average=True, rngs=rngs)
        cin = w
        stages = []
        for planes, blocks, stride in ((w, 3, 1), (2 * w, 4, 2), (4 * w, 6, 2), (8 * w, 3, 2)):
            stage = []
            for k in range(blocks):
                stage.append(NNXBottleneck(cin, planes, stride if k == 0 else 1, rngs=rngs))
                cin = planes * 4
            stages.append(nnx.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nnx.Linear(cin, 1000, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(axis=(1, 2)))


def linen_pair(module: nn.Module, input_shape: Sequence[int], seed: int = 0) -> tuple[Any, Any]:
    """``(module, variables)`` as a Flax user holds them after ``init``."""
    # Compiled: an eager init runs (and compiles) every initializer op by op, seconds.
    variables = jax.jit(module.init)(jax.random.key(seed), jnp.ones((1, *input_shape)))
    return module, variables


def nnx_model(cls: Callable[..., nnx.Module], *args: Any, seed: int = 0) -> nnx.Module:
    """``cls(*args, rngs=nnx.Rngs(seed))``, built under ``nnx.jit`` (eager init is slow)."""
    return nnx.jit(lambda: cls(*args, rngs=nnx.Rngs(seed)))()


def conv(
    x: Array,
    kernel: Array,
    stride: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    dilation: int | Sequence[int] = 1,
) -> Array:
    """Channels-last ``lax.conv_general_dilated`` for 1-, 2- or 3-D inputs."""
    dims = x.ndim - 2
    spatial = "DHW"[-dims:] if dims > 1 else "W"
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    strides = (stride,) * dims if isinstance(stride, int) else tuple(stride)
    dilations = (dilation,) * dims if isinstance(dilation, int) else tuple(dilation)
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilations, dimension_numbers=numbers
    )


def random_kernel(seed: int, *shape: int) -> Array:
    return jax.random.normal(jax.random.key(seed), shape)


def max_pool(x: Array, window: int, stride: int, padding: int = 0) -> Array:
    """``lax.reduce_window`` max pooling over the spatial axes."""
    dims = x.ndim - 2
    pads = ((0, 0), *((padding, padding),) * dims, (0, 0))
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, *(window,) * dims, 1),
        (1, *(stride,) * dims, 1),
        pads,
    )


def readme_function() -> Callable[[Array], Array]:
    """The README network as a plain function of ``lax`` convolutions and ``jax.nn.relu``."""
    kernels = [
        random_kernel(1, 5, 5, 3, 8),
        random_kernel(2, 3, 3, 8, 8),
        random_kernel(3, 3, 3, 8, 8),
        random_kernel(4, 3, 3, 8, 8),
        random_kernel(5, 3, 3, 8, 8),
        random_kernel(6, 3, 3, 8, 8),
    ]

    def net(x: Array) -> Array:
        x = jax.nn.relu(conv(x, kernels[0]))
        x = max_pool(jax.nn.relu(conv(x, kernels[1])), 2, 2)
        x = jax.nn.relu(conv(jax.nn.relu(conv(x, kernels[2])), kernels[3]))
        x = max_pool(x, 2, 2)
        return conv(jax.nn.relu(conv(x, kernels[4])), kernels[5])

    return net


class NNXConvBatchNormDropout(nnx.Module):
    """k3 p1, BatchNorm, ReLU, Dropout, k3 p1: 5 / 1 / 2; carries batch stats and RNG state."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.a = nnx.Conv(1, 4, (3, 3), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.b = nnx.Conv(4, 4, (3, 3), padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.b(self.drop(nnx.relu(self.bn(self.a(x)))))
