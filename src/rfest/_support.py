"""Reading the support (where the gradient is non-zero) of gradient maps along one axis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "axis_supports"]


@dataclass(frozen=True)
class Interval:
    """First and last input index with non-zero gradient along one axis.

    ``gap`` is the longest run of zero-gradient indices strictly inside ``lo..hi``
    (dilated or strided layers leave such holes); 0 for a solid support.
    """

    lo: int
    hi: int
    gap: int

    @property
    def extent(self) -> int:
        return self.hi - self.lo + 1


def axis_supports(maps: np.ndarray, axis: int) -> list[Interval | None]:
    """Support of each map (first array axis = probe) projected onto spatial ``axis``.

    A probe whose map is zero everywhere gets ``None``. Decides on exact non-zeros,
    never on a threshold relative to the largest value (which turns into 0/0 = NaN for
    a unit without gradient and hides small but real contributions).
    """
    others = tuple(a + 1 for a in range(maps.ndim - 1) if a != axis)
    profiles = np.abs(maps).sum(axis=others) if others else np.abs(maps)
    supports: list[Interval | None] = []
    for profile in profiles:
        nonzero = np.flatnonzero(profile > 0)
        if nonzero.size == 0:
            supports.append(None)
            continue
        gap = int(np.diff(nonzero).max()) - 1 if nonzero.size > 1 else 0
        supports.append(Interval(int(nonzero[0]), int(nonzero[-1]), gap))
    return supports
