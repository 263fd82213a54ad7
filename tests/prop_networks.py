"""Random valid networks (Hypothesis strategies) and their builders in each framework.

A strategy draws a :class:`rf_calculator.Net` that the chosen framework can express and
that runs at the input size drawn; ``build(framework, net)`` returns
``(model, input_shape)`` for ``rfest.compute``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

import rfest
from rf_calculator import (
    Branches,
    Conv,
    Layer,
    Net,
    NotRunnable,
    Pointwise,
    Pool,
    check_recurrence,
    dependencies,
    output_length,
    recurrence,
)

FRAMEWORKS = ("torch", "keras", "flax")
_MAX_STRIDE = 8  # total stride per axis, so that fields stay well under the probe cap


# ------------------------------------------------------------------ strategies


@st.composite
def _conv(draw: st.DrawFn, dims: int, framework: str, stride: int | None = None) -> Conv:
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(dims))
    strides = tuple(
        stride if stride is not None else draw(st.sampled_from((1, 1, 2, 3))) for _ in range(dims)
    )
    if framework == "keras" and max(strides) > 1:
        dilation = (1,) * dims  # TensorFlow refuses dilation with stride
    else:
        dilation = tuple(draw(st.sampled_from((1, 1, 2, 3, 6))) for _ in range(dims))
    modes = ("zeros",) if framework == "keras" else ("zeros", "reflect", "replicate", "circular")
    mode = draw(st.sampled_from(modes))
    keywords = ["valid", "explicit", "explicit"]
    if framework != "torch" or max(strides) == 1:
        keywords.append("same")  # torch takes 'same' only with stride 1
    keyword = draw(st.sampled_from(keywords))
    padding: Any = keyword
    if keyword == "explicit":
        symmetric = draw(st.booleans())
        pairs = []
        for _ in range(dims):
            before = draw(st.integers(0, 4))
            pairs.append((before, before if symmetric else draw(st.integers(0, 4))))
        padding = tuple(pairs)
    if keyword == "same" and framework == "flax" and mode != "zeros":
        mode = "zeros"
    groups = draw(st.sampled_from(("full", "full", "grouped", "depthwise")))
    return Conv(kernel, strides, dilation, padding, mode, groups)


@st.composite
def _pool(draw: st.DrawFn, dims: int, framework: str, stride: int | None = None) -> Pool:
    window = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    strides = tuple(stride if stride is not None else draw(st.integers(1, 3)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, k // 2)) for k in window)
    ceil_mode = framework == "torch" and draw(st.booleans())
    return Pool(draw(st.sampled_from(("max", "avg"))), window, strides, padding, ceil_mode)


@st.composite
def _branches(draw: st.DrawFn, dims: int, framework: str) -> Branches:
    """A main path and a shortcut of the same stride: the residual and inception shapes."""
    stride = draw(st.sampled_from((1, 1, 2)))
    main = [draw(_conv(dims, framework, stride))]
    if draw(st.booleans()):
        main.append(draw(_conv(dims, framework, 1)))
    if stride == 1 and draw(st.booleans()):
        shortcut: tuple[Layer, ...] = ()
    elif draw(st.booleans()):
        shortcut = (draw(_pool(dims, framework, stride)),)
    else:
        shortcut = (draw(_conv(dims, framework, stride)),)
    return Branches(draw(st.sampled_from(("add", "concat"))), (tuple(main), shortcut))


@st.composite
def _layer(draw: st.DrawFn, dims: int, framework: str) -> Layer:
    kind = draw(st.sampled_from(("conv", "conv", "conv", "pool", "pointwise", "branches")))
    if kind == "conv":
        return draw(_conv(dims, framework))
    if kind == "pool":
        return draw(_pool(dims, framework))
    if kind == "pointwise":
        return Pointwise(draw(st.sampled_from(("relu", "gelu", "tanh", "batchnorm"))))
    return draw(_branches(dims, framework))


@st.composite
def networks(draw: st.DrawFn, framework: str, dims: int | None = None) -> Net:
    """A network ``framework`` can build that runs at the input size drawn (``dims``
    spatial axes, or a number drawn).

    Sizes go down to 1: inputs smaller than the field, units that see only padding.
    """
    # Keras and JAX compile every probe size anew: smaller networks keep them quick.
    compiled = framework != "torch"
    if dims is None:
        dims = draw(st.sampled_from((1, 2) if compiled else (1, 1, 2, 2, 3)))
    largest = {1: 40, 2: 24, 3: 10}[dims]
    spatial = tuple(draw(st.integers(1, largest)) for _ in range(dims))
    layers = tuple(
        draw(st.lists(_layer(dims, framework), min_size=1, max_size=3 if compiled else 4))
    )
    net = Net(draw(st.integers(1, 3)), spatial, layers)
    assume(runs(net))
    return net


@st.composite
def mirrored_networks(draw: st.DrawFn, framework: str) -> Net:
    """A 2-D network the same along both axes, at a square input: a 1-D network drawn,
    every per-axis entry of every layer repeated for the second axis."""
    net = draw(networks(framework, dims=1))
    mirrored = Net(net.channels, net.spatial * 2, tuple(_mirror(layer) for layer in net.layers))
    assume(runs(mirrored))
    return mirrored


def _mirror(layer: Layer) -> Layer:
    if isinstance(layer, Conv):
        padding = layer.padding if isinstance(layer.padding, str) else layer.padding * 2
        return replace(
            layer,
            kernel=layer.kernel * 2,
            stride=layer.stride * 2,
            dilation=layer.dilation * 2,
            padding=padding,
        )
    if isinstance(layer, Pool):
        return replace(
            layer, window=layer.window * 2, stride=layer.stride * 2, padding=layer.padding * 2
        )
    if isinstance(layer, Branches):
        return replace(layer, branches=tuple(tuple(_mirror(x) for x in b) for b in layer.branches))
    return layer


def runs(net: Net) -> bool:
    """Runs at its size with a bounded stride, and its probed middle units see the input.

    rfest probes units in the middle of the other axes; a middle unit that sees only
    padding there is a NoDependenceError by design, not a field to compare.
    """
    try:
        fields = recurrence(net)
    except NotRunnable:
        return False
    if any(f.stride > _MAX_STRIDE for f in fields):
        return False
    for axis, n in enumerate(net.spatial):
        middle = output_length(net, axis, n) // 2
        if not dependencies(net, axis, n, middle):
            return False
    return True


# ------------------------------------------------------------------ builders


class NotBuildable(Exception):
    """The framework cannot express the net."""


def build(framework: str, net: Net) -> tuple[Any, tuple[int, ...]]:
    return {"torch": _torch, "keras": _keras, "flax": _flax}[framework](net)


def forward_fails(framework: str, model: Any, input_shape: tuple[int, ...]) -> bool:
    """The framework itself refuses one sample of ``input_shape`` (e.g. torch pools
    smaller than their window, whatever the padding)."""
    import numpy as np

    x = np.ones((1, *input_shape))
    try:
        if framework == "torch":
            import torch

            model(torch.from_numpy(x))
        elif framework == "keras":
            model(x.astype("float32"))
        else:
            module, variables = model
            module.apply(variables, x.astype("float32"))
    except Exception:
        return True
    return False


def _out_channels(layer: Conv, cin: int) -> tuple[int, int]:
    """(output channels, groups)."""
    if layer.groups == "depthwise":
        return cin, cin
    if layer.groups == "grouped":
        return 2 * cin, cin
    return layer.out, 1


def _torch(net: Net) -> tuple[Any, tuple[int, ...]]:
    import torch
    from torch import nn
    from torch.nn import functional as F

    dims = net.ndim

    class Pad(nn.Module):
        def __init__(self, pads: tuple[tuple[int, int], ...], mode: str) -> None:
            super().__init__()
            self.pads = tuple(p for pair in reversed(pads) for p in pair)
            self.mode = "constant" if mode == "zeros" else mode

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, self.pads, mode=self.mode)

    class Parallel(nn.Module):
        def __init__(self, how: str, branches: list[nn.Module]) -> None:
            super().__init__()
            self.how = how
            self.branches = nn.ModuleList(branches)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [b(x) for b in self.branches]
            return torch.cat(outs, 1) if self.how == "concat" else sum(outs)  # type: ignore[return-value]

    def conv(layer: Conv, cin: int) -> tuple[nn.Module, int]:
        cout, groups = _out_channels(layer, cin)
        cls = getattr(nn, f"Conv{dims}d")
        args: dict[str, Any] = {
            "stride": layer.stride,
            "dilation": layer.dilation,
            "groups": groups,
        }
        if isinstance(layer.padding, str) or all(b == a for b, a in layer.padding):
            padding = (
                layer.padding
                if isinstance(layer.padding, str)
                else tuple(b for b, _ in layer.padding)
            )
            module = cls(cin, cout, layer.kernel, padding=padding, padding_mode=layer.mode, **args)
            return module, cout
        pad = Pad(layer.padding, layer.mode)
        return nn.Sequential(pad, cls(cin, cout, layer.kernel, **args)), cout

    def sequence(layers: tuple[Layer, ...], cin: int) -> tuple[nn.Module, int]:
        modules: list[nn.Module] = []
        for layer in layers:
            if isinstance(layer, Conv):
                module, cin = conv(layer, cin)
            elif isinstance(layer, Pool):
                cls = getattr(nn, f"{'Max' if layer.kind == 'max' else 'Avg'}Pool{dims}d")
                module = cls(layer.window, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
            elif isinstance(layer, Pointwise):
                if layer.kind == "batchnorm":
                    module = getattr(nn, f"BatchNorm{dims}d")(cin)
                else:
                    module = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[layer.kind]()
            else:
                built = [sequence(branch, cin) for branch in layer.branches]
                outs = [c for _, c in built]
                if layer.how == "add" and len(set(outs)) > 1:
                    cls = getattr(nn, f"Conv{dims}d")
                    built = [(nn.Sequential(m, cls(c, 2, 1)), 2) for m, c in built]
                module = Parallel(layer.how, [m for m, _ in built])
                cin = sum(c for _, c in built) if layer.how == "concat" else built[0][1]
            modules.append(module)
        return nn.Sequential(*modules), cin

    model, _ = sequence(net.layers, net.channels)
    return model.double().eval(), (net.channels, *net.spatial)


def _keras(net: Net) -> tuple[Any, tuple[int, ...]]:
    import keras
    from keras import layers as L

    dims = net.ndim
    suffix = f"{dims}D"

    def pad(x: Any, pairs: tuple[tuple[int, int], ...]) -> Any:
        if not any(b or a for b, a in pairs):
            return x
        return getattr(L, f"ZeroPadding{suffix}")(pairs if dims > 1 else pairs[0])(x)

    def apply(layers: tuple[Layer, ...], x: Any) -> Any:
        for layer in layers:
            cin = x.shape[-1]
            if isinstance(layer, Conv):
                if layer.mode != "zeros":
                    raise NotBuildable("Keras pads with zeros only")
                cout, groups = _out_channels(layer, cin)
                keyword = layer.padding if isinstance(layer.padding, str) else "valid"
                if not isinstance(layer.padding, str):
                    x = pad(x, layer.padding)
                x = getattr(L, f"Conv{suffix}")(
                    cout,
                    layer.kernel,
                    strides=layer.stride,
                    padding=keyword,
                    dilation_rate=layer.dilation,
                    groups=groups,
                )(x)
            elif isinstance(layer, Pool):
                if layer.ceil_mode:
                    raise NotBuildable("Keras pools have no ceil mode")
                x = pad(x, tuple((p, p) for p in layer.padding))
                name = {"max": "MaxPooling", "avg": "AveragePooling"}[layer.kind]
                x = getattr(L, f"{name}{suffix}")(layer.window, layer.stride)(x)
            elif isinstance(layer, Pointwise):
                if layer.kind == "batchnorm":
                    x = L.BatchNormalization()(x)
                else:
                    x = L.Activation(layer.kind)(x)
            else:
                outs = [apply(branch, x) for branch in layer.branches]
                if layer.how == "add":
                    if len({o.shape[-1] for o in outs}) > 1:
                        outs = [getattr(L, f"Conv{suffix}")(2, 1)(o) for o in outs]
                    x = L.Add()(outs)
                else:
                    x = L.Concatenate()(outs)
        return x

    shape = (*net.spatial, net.channels)
    inputs = keras.Input(shape)
    return keras.Model(inputs, apply(net.layers, inputs)), shape


def _flax(net: Net) -> tuple[Any, tuple[int, ...]]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    dims = net.ndim
    modes = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}

    def apply(layers: tuple[Layer, ...], x: Any) -> Any:
        for layer in layers:
            cin = x.shape[-1]
            if isinstance(layer, Conv):
                cout, groups = _out_channels(layer, cin)
                padding: Any
                if isinstance(layer.padding, str):
                    padding = layer.padding.upper()
                elif layer.mode == "zeros":
                    padding = list(layer.padding)
                else:
                    x = jnp.pad(x, ((0, 0), *layer.padding, (0, 0)), mode=modes[layer.mode])
                    padding = "VALID"
                x = nn.Conv(
                    cout,
                    layer.kernel,
                    strides=layer.stride,
                    padding=padding,
                    kernel_dilation=layer.dilation,
                    feature_group_count=groups,
                )(x)
            elif isinstance(layer, Pool):
                if layer.ceil_mode:
                    raise NotBuildable("Flax pools have no ceil mode")
                pool = nn.max_pool if layer.kind == "max" else nn.avg_pool
                pads = tuple((p, p) for p in layer.padding)
                x = pool(x, layer.window, strides=layer.stride, padding=pads)
            elif isinstance(layer, Pointwise):
                if layer.kind == "batchnorm":
                    x = nn.BatchNorm(use_running_average=True)(x)
                else:
                    x = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh}[layer.kind](x)
            else:
                outs = [apply(branch, x) for branch in layer.branches]
                if layer.how == "add":
                    if len({o.shape[-1] for o in outs}) > 1:
                        outs = [nn.Conv(2, (1,) * dims)(o) for o in outs]
                    x = sum(outs)
                else:
                    x = jnp.concatenate(outs, axis=-1)
        return x

    class SpecNet(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return apply(net.layers, x)

    module = SpecNet()
    shape = (*net.spatial, net.channels)
    variables = module.init(jax.random.key(0), jnp.ones((1, *shape)))
    return (module, variables), shape


def check(framework: str, net: Net) -> None:
    """rfest on ``net`` built in ``framework`` equals the recurrences (checked tap by tap)."""
    check_recurrence(net)
    expected = recurrence(net)
    try:
        model, input_shape = build(framework, net)
    except NotBuildable:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            rf = rfest.compute(model, input_shape)
        except rfest.ModelCallError:
            # a clear error is right only where the framework refuses the size given
            assert forward_fails(framework, model, input_shape), describe(net)
            return
    got = (rf.size, rf.stride, rf.padding, rf.uniform)
    want = (
        tuple(f.size for f in expected),
        tuple(f.stride for f in expected),
        tuple(f.padding for f in expected),
        True,
    )
    assert got == want, describe(net)


def describe(net: Net) -> str:
    """The net as one line (for failure messages)."""
    return f"Net(channels={net.channels}, spatial={net.spatial}, layers={net.layers!r})"


__all__ = [
    "FRAMEWORKS",
    "NotBuildable",
    "build",
    "check",
    "describe",
    "mirrored_networks",
    "networks",
    "runs",
]
