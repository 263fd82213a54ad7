"""Framework-neutral test architectures, with builders per framework and hand-worked answers.

A spec is a list of layers (plain dataclasses, spatial tuples per axis) applied in order to
a ``channels`` x ``spatial`` input. ``Parallel`` applies several branches to the same input
and adds or concatenates them. Each spec stores its answer worked from the recurrences
(per axis, from r = 1, j = 1, first = 0: ``first -= p * j``; ``r += (k - 1) * d * j``;
``j *= s``; padding = -first; a branch union takes the widest reach on both sides) in
its comment, never from a backend.

``BUILDERS`` maps a framework name to ``build(spec) -> (model, input_shape, options)``
ready for ``rfest.compute(model, input_shape, **options)``. A builder raises
``NotBuildable`` for a feature its framework lacks (the test then skips for that
framework only). Keras: channels-last input, ``Conv{1,2,3}D(padding="valid"/"same")``
with a ``ZeroPadding`` layer for explicit padding, ``MaxPooling``/``AveragePooling``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Padding = tuple[int, ...] | Literal["valid", "same"]


class NotBuildable(Exception):
    """The framework cannot express this spec (e.g. Keras has no circular padding)."""


@dataclass(frozen=True)
class Conv:
    out: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    padding: Padding = "valid"  # symmetric per axis, or a keyword
    dilation: tuple[int, ...] | None = None
    mode: Literal["zeros", "circular"] = "zeros"


@dataclass(frozen=True)
class Pool:
    kind: Literal["max", "avg"]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour upsampling by an integer factor per axis: unit u copies u // factor."""

    factor: tuple[int, ...]


@dataclass(frozen=True)
class ConvTranspose:
    """Transposed convolution without padding: input i reaches outputs i*stride ... + kernel - 1."""

    out: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class GlobalAvgPool:
    pass


@dataclass(frozen=True)
class Parallel:
    how: Literal["add", "concat"]
    branches: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Spec:
    name: str
    channels: int
    spatial: tuple[int, ...]
    layers: tuple[Any, ...]
    size: tuple[int, ...] | None  # None: global
    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    # Decoders: per axis (step, ((size, start) per phase)): unit k*P + r sees
    # k*step + start_r ... + size_r - 1 (size/stride/padding then hold rfest's summary).
    phases: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] | None = None


def _c(out: int, k: int | tuple[int, ...], dims: int = 2, **kw: Any) -> Conv:
    kernel = (k,) * dims if isinstance(k, int) else k
    for key in ("stride", "dilation"):
        if isinstance(kw.get(key), int):
            kw[key] = (kw[key],) * dims
    if isinstance(kw.get("padding"), int):
        kw["padding"] = (kw["padding"],) * dims
    return Conv(out, kernel, **kw)


SPECS: tuple[Spec, ...] = (
    # conv5 r5; conv3 r7; pool2 r8 j2; conv3 r12; conv3 r16; pool2 r18 j4; conv3 r26; conv3 r34.
    Spec(
        "readme",
        3,
        (96, 96),
        (
            _c(4, 5), ReLU(), _c(4, 3), ReLU(), Pool("max", (2, 2), (2, 2)),
            _c(4, 3), ReLU(), _c(4, 3), ReLU(), Pool("max", (2, 2), (2, 2)),
            _c(4, 3), ReLU(), _c(4, 3),
        ),
        (34, 34), (4, 4), (0, 0),
    ),
    # k7 s2 p3: r7 j2 first-3; max k3 s2 p1: r11 j4 first-5; k3 p1: r19 first-9.
    Spec(
        "stem_strided_padded",
        3,
        (64, 64),
        (_c(4, 7, stride=2, padding=3), ReLU(), Pool("max", (3, 3), (2, 2), (1, 1)),
         _c(4, 3, padding=1)),
        (19, 19), (4, 4), (9, 9),
    ),
    # k3 d2 p2: r5 first-2; again: r9 first-4; k3 d4 p4: r17 first-8.
    Spec(
        "dilation",
        2,
        (40, 40),
        (_c(2, 3, dilation=2, padding=2), _c(2, 3, dilation=2, padding=2),
         _c(2, 3, dilation=4, padding=4)),
        (17, 17), (1, 1), (8, 8),
    ),
    # axis 0: k3 p1 r3 first-1; k5 s2 p2: r7 j2 first-3.  axis 1: k7 s2: r7 j2; k1: r7.
    Spec(
        "non_square",
        3,
        (40, 57),
        (_c(4, (3, 7), stride=(1, 2), padding=(1, 0)), ReLU(),
         _c(4, (5, 1), stride=(2, 1), padding=(2, 0))),
        (7, 7), (2, 2), (3, 0),
    ),
    # 'same' with k4, stride 1: pads 1 before, 2 after; twice: r7 first-2.
    Spec(
        "same_even_kernel",
        1,
        (30, 30),
        (_c(2, 4, padding="same"), _c(2, 4, padding="same")),
        (7, 7), (1, 1), (2, 2),
    ),
    # three k3 p1 circular: r7 padding 3 whatever the padding holds.
    Spec(
        "circular_padding",
        1,
        (24, 24),
        tuple(_c(1, 3, padding=1, mode="circular") for _ in range(3)),
        (7, 7), (1, 1), (3, 3),
        frozenset({"circular"}),
    ),
    # stem k3 p1 (r3 first-1); concat(k1, k5 p2): r7 first-3; add(k3 s2 p1 -> r9 first-4,
    # k1 s2 -> r7 first-3): union r9 first-4, j2.
    Spec(
        "branches",
        3,
        (33, 33),
        (
            _c(4, 3, padding=1), ReLU(),
            Parallel("concat", ((_c(4, 1),), (_c(4, 5, padding=2), ReLU()))),
            Parallel("add", ((_c(4, 3, stride=2, padding=1),), (_c(4, 1, stride=2),))),
        ),
        (9, 9), (2, 2), (4, 4),
    ),
    # max k3 s2 p1: r3 j2 first-1; avg k2 s2: r5 j4 first-1.
    Spec(
        "pooling",
        2,
        (32, 32),
        (Pool("max", (3, 3), (2, 2), (1, 1)), Pool("avg", (2, 2), (2, 2))),
        (5, 5), (4, 4), (1, 1),
    ),
    # k5 s2 p1: r5 j2 first-1; k3 d2: r5 + 2*2*2 = 13.
    Spec(
        "conv1d",
        2,
        (50,),
        (_c(4, 5, 1, stride=2, padding=1), _c(4, 3, 1, dilation=2)),
        (13,), (2,), (1,),
    ),
    # axis0: k3 p1 r3 first-1; pool2 r4 j2; k3 p1 r8 first-3.
    # axis1: k5 s2 p2 r5 j2 first-2; pool2 r7 j4; k3 p1 r15 first-6.
    # axis2: k1 s2 r1 j2; pool2 r3 j4; k3 p1 r11 first-4.
    Spec(
        "conv3d",
        1,
        (12, 20, 24),
        (_c(2, (3, 5, 1), 3, stride=(1, 2, 2), padding=(1, 2, 0)),
         Pool("max", (2, 2, 2), (2, 2, 2)), _c(2, 3, 3, padding=1)),
        (8, 15, 11), (2, 4, 4), (3, 6, 4),
    ),
    # every unit of a global average sees the whole input.
    Spec("global_pool", 3, (32, 32), (_c(4, 3), GlobalAvgPool()), None),
)  # fmt: skip


DECODER_SPECS: tuple[Spec, ...] = (
    # k3 s2 p1: r3 j2 first-1; up x2: unit u copies u // 2, field 2*(u // 2) - 1 ... + 2;
    # k3 p1: unit 2k sees copies of k-1..k -> 2k - 3 ... 2k + 1 (5, start -3), unit 2k+1
    # sees k..k+1 -> 2k - 1 ... 2k + 3 (5, start -1). Period 2, two pixels on.
    Spec(
        "upsample_nearest",
        1,
        (24, 20),
        (_c(2, 3, stride=2, padding=1), Upsample((2, 2)), _c(1, 3, padding=1)),
        (5, 5), (1, 1), (3, 3),
        phases=((2, ((5, -3), (5, -1))),) * 2,
    ),
    # k3 p1: r3 first-1; transposed k3 s2: output u = 2i + t, t < 3, so unit 2k gets
    # i = k-1, k (widened by the conv: 4 pixels from k-2) and unit 2k+1 gets i = k (3 from
    # k-1). Period 2, one pixel on. Axis 1 of the 1-D case alike.
    Spec(
        "transposed_conv",
        1,
        (18, 16),
        (_c(2, 3, padding=1), ConvTranspose(1, (3, 3), (2, 2))),
        (4, 4), (1, 1), (2, 2),
        phases=((1, ((4, -2), (3, -1))),) * 2,
    ),
    # 1-D: transposed k2 s2 (unit u gets u // 2), then up x2 (u // 4): period 4, one pixel on.
    Spec(
        "decoder_1d",
        1,
        (30,),
        (ConvTranspose(2, (2,), (2,)), Upsample((2,))),
        (1,), (1,), (0,),
        phases=((1, ((1, 0),) * 4),),
    ),
    # 3-D: axes 0 and 2 as transposed_conv; axis 1 upsampled x2 after it: period 4 with
    # phases 2k, 2k+1 of the transposed conv each doubled.
    Spec(
        "decoder_3d",
        1,
        (9, 8, 10),
        (_c(2, 3, 3, padding=1), ConvTranspose(1, (3, 3, 3), (2, 2, 2)), Upsample((1, 2, 1))),
        (4, 4, 4), (1, 1, 1), (2, 2, 2),
        phases=(
            (1, ((4, -2), (3, -1))),
            (1, ((4, -2), (4, -2), (3, -1), (3, -1))),
            (1, ((4, -2), (3, -1))),
        ),
    ),
)  # fmt: skip
"""Non-uniform architectures (PyTorch, Keras and Flax have every layer): every phase is
worked by hand in the comment above it."""


# ---------------------------------------------------------------- PyTorch


def build_torch(spec: Spec) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    import torch
    from torch import nn

    dims = len(spec.spatial)

    class Parallel_(nn.Module):
        def __init__(self, how: str, branches: list[nn.Module]) -> None:
            super().__init__()
            self.how = how
            self.branches = nn.ModuleList(branches)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [b(x) for b in self.branches]
            return torch.cat(outs, dim=1) if self.how == "concat" else sum(outs[1:], outs[0])

    class Mean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=tuple(range(2, x.dim())))

    def layers(seq: tuple[Any, ...], channels: int) -> tuple[list[nn.Module], int]:
        out: list[nn.Module] = []
        for layer in seq:
            if isinstance(layer, Conv):
                cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
                out.append(
                    cls(
                        channels,
                        layer.out,
                        layer.kernel,
                        stride=layer.stride or 1,
                        padding=layer.padding,
                        dilation=layer.dilation or 1,
                        padding_mode=layer.mode,
                    )
                )
                channels = layer.out
            elif isinstance(layer, Pool):
                name = {"max": "MaxPool", "avg": "AvgPool"}[layer.kind]
                pool = getattr(nn, f"{name}{dims}d")
                out.append(pool(layer.window, layer.stride, layer.padding or 0))
            elif isinstance(layer, ReLU):
                out.append(nn.ReLU())
            elif isinstance(layer, Upsample):
                out.append(nn.Upsample(scale_factor=layer.factor, mode="nearest"))
            elif isinstance(layer, ConvTranspose):
                cls_t = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
                out.append(cls_t(channels, layer.out, layer.kernel, stride=layer.stride))
                channels = layer.out
            elif isinstance(layer, GlobalAvgPool):
                out.append(Mean())
            elif isinstance(layer, Parallel):
                built = [layers(b, channels) for b in layer.branches]
                out.append(Parallel_(layer.how, [nn.Sequential(*m) for m, _ in built]))
                widths = [c for _, c in built]
                channels = sum(widths) if layer.how == "concat" else widths[0]
        return out, channels

    torch.manual_seed(0)
    modules, _ = layers(spec.layers, spec.channels)
    return nn.Sequential(*modules), (spec.channels, *spec.spatial), {}


# ---------------------------------------------------------------- Flax (Linen)


def build_flax(spec: Spec) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    dims = len(spec.spatial)

    def apply(seq: tuple[Any, ...], x: Any) -> Any:
        for layer in seq:
            if isinstance(layer, Conv):
                if layer.mode == "circular":
                    padding: Any = "CIRCULAR"
                elif isinstance(layer.padding, str):
                    padding = layer.padding.upper()
                else:
                    padding = [(p, p) for p in layer.padding]
                x = nn.Conv(
                    layer.out,
                    layer.kernel,
                    strides=layer.stride or 1,
                    padding=padding,
                    kernel_dilation=layer.dilation or 1,
                )(x)
            elif isinstance(layer, Pool):
                pool = nn.max_pool if layer.kind == "max" else nn.avg_pool
                pads = [(p, p) for p in (layer.padding or (0,) * dims)]
                x = pool(x, layer.window, strides=layer.stride, padding=pads)
            elif isinstance(layer, ReLU):
                x = nn.relu(x)
            elif isinstance(layer, Upsample):
                grown = [n * f for n, f in zip(x.shape[1:-1], layer.factor, strict=True)]
                x = jax.image.resize(x, (x.shape[0], *grown, x.shape[-1]), method="nearest")
            elif isinstance(layer, ConvTranspose):
                x = nn.ConvTranspose(layer.out, layer.kernel, layer.stride, padding="VALID")(x)
            elif isinstance(layer, GlobalAvgPool):
                x = x.mean(axis=tuple(range(1, 1 + dims)))
            elif isinstance(layer, Parallel):
                outs = [apply(branch, x) for branch in layer.branches]
                x = jnp.concatenate(outs, axis=-1) if layer.how == "concat" else sum(outs)
        return x

    class SpecNet(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return apply(spec.layers, x)

    module = SpecNet()
    shape = (*spec.spatial, spec.channels)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.ones((1, *shape)))
    return (module, variables), shape, {}


# ---------------------------------------------------------------- Keras 3


def build_keras(spec: Spec) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    import keras
    from keras import layers as L

    dims = len(spec.spatial)
    suffix = f"{dims}D"

    def pad(x: Any, padding: tuple[int, ...]) -> Any:
        if not any(padding):
            return x
        return getattr(L, f"ZeroPadding{suffix}")(padding if dims > 1 else padding[0])(x)

    def apply(seq: tuple[Any, ...], x: Any) -> Any:
        for layer in seq:
            if isinstance(layer, Conv):
                if layer.mode != "zeros":
                    raise NotBuildable(f"Keras has no {layer.mode} padding")
                keyword = layer.padding if isinstance(layer.padding, str) else "valid"
                if not isinstance(layer.padding, str):
                    x = pad(x, layer.padding)
                x = getattr(L, f"Conv{suffix}")(
                    layer.out,
                    layer.kernel,
                    strides=layer.stride or 1,
                    padding=keyword,
                    dilation_rate=layer.dilation or 1,
                )(x)
            elif isinstance(layer, Pool):
                x = pad(x, layer.padding or (0,) * dims)
                name = {"max": "MaxPooling", "avg": "AveragePooling"}[layer.kind]
                x = getattr(L, f"{name}{suffix}")(layer.window, layer.stride)(x)
            elif isinstance(layer, ReLU):
                x = L.ReLU()(x)
            elif isinstance(layer, Upsample):
                factor = layer.factor if dims > 1 else layer.factor[0]
                x = getattr(L, f"UpSampling{suffix}")(factor)(x)
            elif isinstance(layer, ConvTranspose):
                kernel, stride = (
                    (layer.kernel, layer.stride) if dims > 1 else (layer.kernel[0], layer.stride[0])
                )
                x = getattr(L, f"Conv{suffix}Transpose")(layer.out, kernel, stride)(x)
            elif isinstance(layer, GlobalAvgPool):
                x = getattr(L, f"GlobalAveragePooling{suffix}")()(x)
            elif isinstance(layer, Parallel):
                outs = [apply(branch, x) for branch in layer.branches]
                x = (L.Concatenate() if layer.how == "concat" else L.Add())(outs)
        return x

    inputs = keras.Input((*spec.spatial, spec.channels))
    model = keras.Model(inputs, apply(spec.layers, inputs))
    return model, (*spec.spatial, spec.channels), {}


BUILDERS: dict[str, Callable[[Spec], tuple[Any, tuple[int, ...], dict[str, Any]]]] = {
    name: builder
    for name, builder, module in (
        ("torch", build_torch, "torch"),
        ("flax", build_flax, "flax"),
        ("keras", build_keras, "keras"),
    )
    if importlib.util.find_spec(module) is not None
}
"""Builders of the frameworks installed here; ``name -> build(spec)``."""
