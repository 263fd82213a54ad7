"""A framework-free GradientProvider that draws exact gradient supports from geometry.

Each axis is a "virtual layer stack" summarised by its true size, stride and left/right
padding; gradient maps are the outer product of per-axis supports, so every expectation
in the estimator tests is the geometry the test itself wrote down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Axis:
    """True geometry along one axis. ``pad`` may depend on the input size ('same')."""

    size: int
    stride: int
    pad: Callable[[int], tuple[int, int]] = lambda n: (0, 0)
    hole: int = 0  # pixels skipped between support elements (dilation); size counts them
    border: str = "zeros"  # zeros | reflect | circular
    upsample: int = 1  # nearest upsampling by this factor at the end
    fixed_out: int | None = None  # adaptive pooling to this many units
    whole: bool = False  # every unit sees the whole axis (global path)
    stem: int = 1  # a 'valid' stem of this stride never reaches the last n % stem pixels

    def out_len(self, n: int) -> int:
        if self.fixed_out is not None:
            return self.fixed_out
        left, right = self.pad(n)
        return self.upsample * ((n + left + right - self.size) // self.stride + 1)

    def support(self, i: int, n: int) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        if self.whole:
            mask[:] = True
            return mask
        if self.fixed_out is not None:
            mask[(i * n) // self.fixed_out : -(-(i + 1) * n // self.fixed_out)] = True
            return mask
        start = (i // self.upsample) * self.stride - self.pad(n)[0]
        reach = (n // self.stem) * self.stem
        for t in range(start, start + self.size, self.hole + 1):
            if 0 <= t < reach:
                mask[t] = True
            elif self.border == "reflect":
                mask[-t if t < 0 else 2 * (n - 1) - t] = True
            elif self.border == "circular":
                mask[t % n] = True
        return mask


def same_padding(kernel: int, stride: int) -> Callable[[int], tuple[int, int]]:
    """TensorFlow 'same' for one layer: the extra pixel goes at the end."""

    def pad(n: int) -> tuple[int, int]:
        out = -(-n // stride)
        total = max((out - 1) * stride + kernel - n, 0)
        return total // 2, total - total // 2

    return pad


def symmetric(p: int) -> Callable[[int], tuple[int, int]]:
    return lambda n: (p, p)


@dataclass
class FakeProvider:
    axes: Sequence[Axis]
    spatial_shape: tuple[int | None, ...]
    output_names: tuple[str, ...] = ("out",)
    value: float = 1.0
    no_spatial_output: bool = False
    calls: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        if self.no_spatial_output:
            return dict.fromkeys(self.output_names, ())
        shape = tuple(axis.out_len(n) for axis, n in zip(self.axes, spatial_shape, strict=True))
        return dict.fromkeys(self.output_names, shape)

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        self.calls.append((tuple(spatial_shape), len(units)))
        maps = np.zeros((len(units), *spatial_shape))
        for k, unit in enumerate(units):
            if self.no_spatial_output:
                masks = [np.ones(n, dtype=bool) for n in spatial_shape]
            else:
                masks = [
                    a.support(i, n) for a, i, n in zip(self.axes, unit, spatial_shape, strict=True)
                ]
            grid = np.ix_(*masks)
            block = maps[k]
            block[grid] = self.value
        return maps
