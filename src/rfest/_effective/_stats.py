"""Statistics of a non-negative heatmap (an effective receptive field), per spatial axis.

Every statistic is in input pixel coordinates: index ``i`` along an axis is pixel ``i``.
Per-axis numbers come from the *marginal* distribution of that axis (the heatmap summed
over the other axes, divided by its total), so they are exact moments of a discrete
distribution, never fitted Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from rfest._errors import NoDependenceError, NonFiniteGradientError

__all__ = ["DEFAULT_FRACTIONS", "HeatmapStatistics", "heatmap_statistics"]

DEFAULT_FRACTIONS = (0.5, 0.9)
"""Mass fractions whose extent and area are reported unless others are asked for."""

_MASS_TOLERANCE = 1e-12  # relative: a window holding f - 1e-12 of the mass holds f


@dataclass(frozen=True)
class HeatmapStatistics:
    """Mass statistics of a non-negative heatmap, per spatial axis in input-axis order.

    ``center_of_mass`` and ``sigma``
        Mean and standard deviation of each axis's marginal distribution, in pixels.
    ``extent[f]``
        Per axis, the length in pixels of the shortest run of consecutive pixels whose
        marginal mass is at least ``f`` of the total.
    ``interval[f]``
        Per axis, that run as ``(start, stop)`` (stop exclusive). Among equally short runs
        the one with the most mass wins, then the one centred closest to the centre of
        mass, then the first.
    ``area[f]``
        The fewest pixels of the whole heatmap that together hold at least ``f`` of the
        mass (the highest-density region), a pixel count.
    ``level[f]``
        The smallest heatmap value inside that region: the contour level enclosing it.
    ``total``
        The heatmap's sum.

    Example:
        >>> import numpy as np
        >>> s = heatmap_statistics(np.outer([1.0, 2.0, 1.0], [0.0, 1.0, 1.0]))
        >>> s.center_of_mass, round(s.sigma[0] ** 2, 12), round(s.sigma[1] ** 2, 12)
        ((1.0, 1.5), 0.5, 0.25)
        >>> s.extent[0.5], s.interval[0.5], s.area[0.5]
        ((1, 1), ((1, 2), (1, 2)), 2)
    """

    total: float
    center_of_mass: tuple[float, ...]
    sigma: tuple[float, ...]
    fractions: tuple[float, ...]
    extent: Mapping[float, tuple[int, ...]]
    interval: Mapping[float, tuple[tuple[int, int], ...]]
    area: Mapping[float, int]
    level: Mapping[float, float]

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.center_of_mass)


def heatmap_statistics(
    heatmap: np.ndarray, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> HeatmapStatistics:
    """Centre of mass, sigma, mass extents and areas of a non-negative heatmap.

    Args:
        heatmap: array of spatial shape (1 to 3 axes), finite, non-negative, not all zero.
        fractions: mass fractions in ``(0, 1]`` for ``extent``, ``interval``, ``area``.

    Example:
        >>> import numpy as np
        >>> p = np.convolve(np.convolve([1.0, 1, 1], [1.0, 1, 1]), [1.0, 1, 1])  # 3 convs
        >>> s = heatmap_statistics(p)
        >>> s.center_of_mass, round(s.sigma[0] ** 2, 12)  # variance 2/3 per conv
        ((3.0,), 2.0)
    """
    values = np.asarray(heatmap, dtype=np.float64)
    fractions = _check_fractions(fractions)
    if values.ndim < 1:
        raise ValueError("a heatmap needs at least one spatial axis")
    if not np.all(np.isfinite(values)):
        raise NonFiniteGradientError(
            "the heatmap holds NaN or infinity; the model's gradients overflowed or are "
            "undefined at these inputs (try dtype='float64' or other inputs)"
        )
    if np.any(values < 0):
        raise ValueError("a heatmap must be non-negative (a mass distribution)")
    total = float(values.sum())
    if total <= 0:
        raise NoDependenceError(
            "the heatmap is zero everywhere: the unit does not depend on the input at "
            "these inputs (dead activations?); try other units, inputs, or "
            "contribution='abs'. After a normalisation over channels (LayerNorm) the "
            "channel sum of a unit is constant: measure the output before the norm"
        )
    centers, sigmas, intervals = [], [], []
    for axis in range(values.ndim):
        others = tuple(a for a in range(values.ndim) if a != axis)
        marginal = values.sum(axis=others) if others else values
        mass = float(marginal.sum())
        index = np.arange(marginal.size, dtype=np.float64)
        mean = float(np.dot(index, marginal)) / mass
        centers.append(mean)
        sigmas.append(math.sqrt(float(np.dot((index - mean) ** 2, marginal)) / mass))
        intervals.append([_shortest_window(marginal, f, mean) for f in fractions])
    interval = {
        f: tuple(intervals[a][k] for a in range(values.ndim)) for k, f in enumerate(fractions)
    }
    area, level = {}, {}
    ordered = np.sort(values, axis=None)[::-1]
    cumulative = np.cumsum(ordered)
    for f in fractions:
        count = int(np.searchsorted(cumulative, _threshold(f, float(cumulative[-1])))) + 1
        count = min(count, ordered.size)
        area[f] = count
        level[f] = float(ordered[count - 1])
    return HeatmapStatistics(
        total=total,
        center_of_mass=tuple(centers),
        sigma=tuple(sigmas),
        fractions=fractions,
        extent=MappingProxyType(
            {f: tuple(stop - start for start, stop in interval[f]) for f in fractions}
        ),
        interval=MappingProxyType(interval),
        area=MappingProxyType(area),
        level=MappingProxyType(level),
    )


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    checked = tuple(float(f) for f in fractions)
    if not checked or not all(0.0 < f <= 1.0 for f in checked):
        raise ValueError(f"fractions={fractions!r}: each must lie in (0, 1], e.g. (0.5, 0.9)")
    return checked


def _threshold(fraction: float, total: float) -> float:
    return fraction * total - _MASS_TOLERANCE * total


def _shortest_window(marginal: np.ndarray, fraction: float, mean: float) -> tuple[int, int]:
    """``(start, stop)`` of the shortest run of pixels holding ``fraction`` of the mass."""
    cumulative = np.concatenate(([0.0], np.cumsum(marginal)))
    threshold = _threshold(fraction, float(cumulative[-1]))

    def masses(length: int) -> np.ndarray:
        return cumulative[length:] - cumulative[:-length]

    # The best window's mass never decreases with its length: bisect on the length.
    lo, hi = 1, marginal.size
    while lo < hi:
        mid = (lo + hi) // 2
        if masses(mid).max() >= threshold:
            hi = mid
        else:
            lo = mid + 1
    held = masses(lo)
    best = np.flatnonzero(held == held.max())
    distance = np.abs(best + (lo - 1) / 2 - mean)
    start = int(best[np.flatnonzero(distance == distance.min())[0]])
    return start, start + lo
