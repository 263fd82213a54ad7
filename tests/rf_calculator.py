"""Receptive fields of layer-list networks, worked out without rfest: the oracle of the
property tests (``tests/test_properties.py``).

A :class:`Net` is a list of layers (plain dataclasses, one entry per spatial axis) applied
to a ``channels`` x ``spatial`` input; :class:`Branches` applies several layer lists to the
same input and adds or concatenates them. Two independent means give its field:

- :func:`recurrence` walks the layer recurrences at the input size given, per axis, from
  r = 1, j = 1, first = 0 (the first input index unit 0 sees):
  ``first -= left_pad * j``; ``r += (K - 1) * j`` with ``K = (k - 1) * d + 1``;
  ``j *= s``; a branch union takes the widest reach on both sides. padding = -first.
- :func:`dependencies` enumerates, tap by tap, the input indices one output unit depends
  on, with the padding's real semantics (zeros drop a tap, reflect and replicate fold it,
  circular wraps it). It checks the recurrence (``check_recurrence``) and tells which
  units see only padding.

Neither reads rfest. 'same' padding follows TensorFlow, the rule every framework here
shares for the cases generated (torch allows 'same' with stride 1 only): total padding
``max((ceil(n / s) - 1) * s + K - n, 0)``, ``total // 2`` before and the rest after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

PadSpec = tuple[tuple[int, int], ...] | Literal["same", "valid"]
Mode = Literal["zeros", "reflect", "replicate", "circular"]


@dataclass(frozen=True)
class Conv:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: PadSpec  # per axis (before, after), or a keyword
    mode: Mode = "zeros"
    groups: Literal["full", "grouped", "depthwise"] = "full"
    out: int = 2


@dataclass(frozen=True)
class Pool:
    kind: Literal["max", "avg"]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]  # symmetric per axis
    ceil_mode: bool = False


@dataclass(frozen=True)
class Pointwise:
    """Anything that keeps every position to itself: activations, batch norm."""

    kind: Literal["relu", "gelu", "tanh", "batchnorm"]


@dataclass(frozen=True)
class Branches:
    how: Literal["add", "concat"]
    branches: tuple[tuple[Layer, ...], ...]


Layer = Conv | Pool | Pointwise | Branches


@dataclass(frozen=True)
class Net:
    channels: int
    spatial: tuple[int, ...]
    layers: tuple[Layer, ...]

    @property
    def ndim(self) -> int:
        return len(self.spatial)


@dataclass(frozen=True)
class Field:
    """Geometry along one axis: unit i sees ``i * stride - padding ...`` (``size`` wide)."""

    size: int
    stride: int
    padding: int


class NotRunnable(Exception):
    """The network cannot take this input size (an empty map, padding the layer refuses)."""


# ------------------------------------------------------------------ one layer, one axis


@dataclass(frozen=True)
class _Window:
    """What one conv or pool layer does along one axis at input length ``n``."""

    taps: int
    dilation: int
    stride: int
    before: int
    after: int
    mode: Mode
    out: int

    @property
    def extent(self) -> int:
        return (self.taps - 1) * self.dilation + 1


def same_pads(n: int, extent: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(n / stride) - 1) * stride + extent - n, 0)
    return total // 2, total - total // 2


def window(layer: Conv | Pool, axis: int, n: int) -> _Window:
    if isinstance(layer, Conv):
        k, s, d = layer.kernel[axis], layer.stride[axis], layer.dilation[axis]
        extent = (k - 1) * d + 1
        if layer.padding == "valid":
            before, after = 0, 0
        elif layer.padding == "same":
            before, after = same_pads(n, extent, s)
        else:
            before, after = layer.padding[axis]
        if layer.mode == "reflect" and max(before, after) >= n:
            raise NotRunnable(f"reflect padding {before, after} needs an input over {n}")
        if layer.mode in ("circular", "replicate") and max(before, after) > n:
            raise NotRunnable(f"{layer.mode} padding {before, after} wraps more than {n}")
        out = (n + before + after - extent) // s + 1
        window_ = _Window(k, d, s, before, after, layer.mode, out)
    else:
        k, s, p = layer.window[axis], layer.stride[axis], layer.padding[axis]
        if layer.ceil_mode:  # torch: the last window must start inside the input or left pad
            out = -(-(n + 2 * p - k) // s) + 1
            if (out - 1) * s >= n + p:
                out -= 1
        else:
            out = (n + 2 * p - k) // s + 1
        window_ = _Window(k, 1, s, p, p, "zeros", out)
    if window_.out < 1 or n + window_.before + window_.after < window_.extent:
        raise NotRunnable(f"{type(layer).__name__} has no output at input length {n}")
    return window_


def _source(t: int, n: int, mode: Mode) -> int | None:
    """Input index a tap at padded position ``t`` reads (None: zero padding)."""
    if 0 <= t < n:
        return t
    if mode == "zeros":
        return None
    if mode == "reflect":
        return -t if t < 0 else 2 * (n - 1) - t
    if mode == "replicate":
        return min(max(t, 0), n - 1)
    return t % n


# ------------------------------------------------------------------ the recurrence


@dataclass(frozen=True)
class _State:
    n: int  # map length
    size: int
    stride: int
    first: int  # first input index unit 0 sees (including padding)


def _walk(layers: Iterable[Layer], axis: int, state: _State) -> _State:
    for layer in layers:
        if isinstance(layer, Pointwise):
            continue
        if isinstance(layer, Branches):
            ends = [_walk(branch, axis, state) for branch in layer.branches]
            if len({e.n for e in ends}) != 1:
                raise NotRunnable(f"branches end at lengths {[e.n for e in ends]}")
            if len({e.stride for e in ends}) != 1:
                raise NotRunnable(f"branches have strides {[e.stride for e in ends]}")
            first = min(e.first for e in ends)
            last = max(e.first + e.size - 1 for e in ends)
            state = _State(ends[0].n, last - first + 1, ends[0].stride, first)
            continue
        w = window(layer, axis, state.n)
        state = _State(
            w.out,
            state.size + (w.extent - 1) * state.stride,
            state.stride * w.stride,
            state.first - w.before * state.stride,
        )
    return state


def recurrence(net: Net, spatial: tuple[int, ...] | None = None) -> tuple[Field, ...]:
    """Field per axis at input size ``spatial`` (default the net's), from the recurrences."""
    sizes = spatial or net.spatial
    fields = []
    for axis, n in enumerate(sizes):
        end = _walk(net.layers, axis, _State(n, 1, 1, 0))
        fields.append(Field(end.size, end.stride, -end.first))
    return tuple(fields)


def output_length(net: Net, axis: int, n: int) -> int:
    return _walk(net.layers, axis, _State(n, 1, 1, 0)).n


# ------------------------------------------------------------------ brute force


def _back(layers: tuple[Layer, ...], axis: int, n: int, positions: set[int]) -> set[int]:
    """Input indices (of a map of length ``n``) the given output positions depend on."""
    lengths = [n]
    for layer in layers:  # forward: the length every layer sees
        if isinstance(layer, Pointwise):
            lengths.append(lengths[-1])
        elif isinstance(layer, Branches):
            lengths.append(_walk(layer.branches[0], axis, _State(lengths[-1], 1, 1, 0)).n)
        else:
            lengths.append(window(layer, axis, lengths[-1]).out)
    for layer, n_in in zip(reversed(layers), reversed(lengths[:-1]), strict=True):
        if isinstance(layer, Pointwise):
            continue
        if isinstance(layer, Branches):
            positions = set().union(*(_back(b, axis, n_in, positions) for b in layer.branches))
            continue
        w = window(layer, axis, n_in)
        sources = set()
        for o in positions:
            for q in range(w.taps):
                t = _source(o * w.stride - w.before + q * w.dilation, n_in, w.mode)
                if t is not None:
                    sources.add(t)
        positions = sources
    return positions


def dependencies(net: Net, axis: int, n: int, unit: int) -> set[int]:
    """Input indices along ``axis`` that output unit ``unit`` depends on at length ``n``."""
    return _back(net.layers, axis, n, {unit})


def check_recurrence(net: Net) -> None:
    """Cross-check :func:`recurrence` tap by tap, far from every border.

    At a size grown by whole strides (so 'same' padding and branch alignment stay those of
    the net's size), the middle unit must depend on exactly the ends of its recurrence
    field, and the output must have gained one unit per stride.
    """
    fields = recurrence(net)
    for axis, (n0, field) in enumerate(zip(net.spatial, fields, strict=True)):
        m0 = output_length(net, axis, n0)
        k = math.ceil((4 * field.size + 4 * field.stride + 8) / field.stride)
        n = n0 + k * field.stride
        assert output_length(net, axis, n) == m0 + k, (axis, n0, n)
        assert recurrence(net, _with(net.spatial, axis, n))[axis] == field, (axis, n)
        unit = output_length(net, axis, n) // 2
        seen = dependencies(net, axis, n, unit)
        start = unit * field.stride - field.padding
        assert (min(seen), max(seen)) == (start, start + field.size - 1), (axis, field, n)


def _with(shape: tuple[int, ...], axis: int, value: int) -> tuple[int, ...]:
    return (*shape[:axis], value, *shape[axis + 1 :])


class BruteForceProvider:
    """A framework-free GradientProvider for a :class:`Net`: maps from :func:`dependencies`.

    The map of a unit is the outer product of its per-axis dependency sets (for branches
    the true map is a union of products, whose projections on each axis, all the estimator
    reads, are the same). Sizes the net cannot take raise ``rfest.ModelCallError``.
    """

    output_names = ("output",)

    def __init__(self, net: Net) -> None:
        self.net = net
        self.spatial_shape: tuple[int | None, ...] = net.spatial

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        import rfest

        try:
            shape = tuple(output_length(self.net, a, n) for a, n in enumerate(spatial_shape))
        except NotRunnable as error:
            raise rfest.ModelCallError(f"the net cannot take {spatial_shape}: {error}") from error
        return {"output": shape}

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        maps = np.zeros((len(units), *spatial_shape))
        for k, unit in enumerate(units):
            masks = []
            for axis, (n, i) in enumerate(zip(spatial_shape, unit, strict=True)):
                mask = np.zeros(n, dtype=bool)
                mask[sorted(dependencies(self.net, axis, n, i))] = True
                masks.append(mask)
            maps[k][np.ix_(*masks)] = 1.0
        return maps
