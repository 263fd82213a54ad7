"""The result type of :func:`rfest.effective`: an effective receptive field."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfest._effective._stats import HeatmapStatistics, heatmap_statistics
from rfest._result import ReceptiveField

__all__ = ["EffectiveField"]


@dataclass(frozen=True, eq=False)
class EffectiveField:
    """Effective receptive field of one output unit (or several, averaged), per axis.

    ``heatmap`` (read-only, float64, input spatial shape in input-axis order) is the mean
    over images (and units) of each input pixel's contribution to the unit: the gradient
    of the unit (summed over its channels) turned into a contribution (``|g|`` or
    ``max(g, 0)``) and summed over input channels. Statistics are those of
    :class:`rfest.HeatmapStatistics`, in input pixel coordinates.

    ``receptive_field`` is the theoretical field (:func:`rfest.compute` on the same model,
    output and input size) or None when it was not computed; ``area_ratio[f]`` divides
    ``area[f]`` by its area (the whole input along axes where it is global).

    Example:
        >>> import numpy as np
        >>> from rfest._effective._stats import heatmap_statistics
        >>> heat = np.outer([0.0, 1, 2, 1, 0], [0.0, 1, 2, 1, 0])
        >>> erf = EffectiveField(heat, heatmap_statistics(heat), (1, 5, 5), (5, 5), None,
        ...                      (5, 5), ((2, 2),), 1, None, {})
        >>> erf.center_of_mass, erf.area[0.5], erf.area_ratio[0.5]
        ((2.0, 2.0), 3, None)
    """

    heatmap: np.ndarray
    statistics: HeatmapStatistics
    input_shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    output: str | None
    output_shape: tuple[int, ...]
    units: tuple[tuple[int, ...], ...]
    num_images: int
    receptive_field: ReceptiveField | None
    options: Mapping[str, Any]

    def __post_init__(self) -> None:
        heatmap = np.array(self.heatmap, dtype=np.float64)
        heatmap.setflags(write=False)
        object.__setattr__(self, "heatmap", heatmap)

    @property
    def ndim(self) -> int:
        """Number of spatial axes of the input."""
        return len(self.spatial_shape)

    @property
    def center_of_mass(self) -> tuple[float, ...]:
        """Centre of mass per axis, in input pixel coordinates."""
        return self.statistics.center_of_mass

    @property
    def sigma(self) -> tuple[float, ...]:
        """Standard deviation per axis of the heatmap's marginal distribution, in pixels."""
        return self.statistics.sigma

    @property
    def fractions(self) -> tuple[float, ...]:
        """Mass fractions for which extents and areas were computed."""
        return self.statistics.fractions

    @property
    def extent(self) -> Mapping[float, tuple[int, ...]]:
        """``extent[f]``: per axis, the shortest run of pixels holding ``f`` of the mass."""
        return self.statistics.extent

    @property
    def interval(self) -> Mapping[float, tuple[tuple[int, int], ...]]:
        """``interval[f]``: per axis, that run as ``(start, stop)``."""
        return self.statistics.interval

    @property
    def area(self) -> Mapping[float, int]:
        """``area[f]``: fewest pixels holding ``f`` of the mass."""
        return self.statistics.area

    @property
    def rf_area(self) -> int | None:
        """Area (pixels) of the theoretical field; the input's size along global axes."""
        rf = self.receptive_field
        if rf is None:
            return None
        sizes = rf.size if rf.size is not None else (None,) * self.ndim
        return math.prod(
            n if s is None else s for s, n in zip(sizes, self.spatial_shape, strict=True)
        )

    @property
    def area_ratio(self) -> Mapping[float, float | None]:
        """``area[f] / rf_area``: how much of the theoretical field holds ``f`` of the mass."""
        rf_area = self.rf_area
        return {f: None if rf_area is None else a / rf_area for f, a in self.area.items()}

    @property
    def rf_box(self) -> tuple[tuple[int, int] | None, ...] | None:
        """Input region ``(start, stop)`` per axis the units see in theory (their union).

        None along an axis where the field is global; None when no field was computed.
        """
        rf = self.receptive_field
        if rf is None:
            return None
        sizes = rf.size if rf.size is not None else (None,) * self.ndim
        strides = rf.stride if rf.stride is not None else (None,) * self.ndim
        paddings = rf.padding if rf.padding is not None else (None,) * self.ndim
        box: list[tuple[int, int] | None] = []
        for axis, (size, stride, padding) in enumerate(zip(sizes, strides, paddings, strict=True)):
            if size is None or stride is None or padding is None:
                box.append(None)
                continue
            starts = [unit[axis] * stride - padding for unit in self.units]
            box.append((min(starts), max(starts) + size))
        return tuple(box)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form (the heatmap as nested lists, fractions as strings)."""

        def per_fraction(values: Mapping[float, Any]) -> dict[str, Any]:
            return {str(f): _plain(v) for f, v in values.items()}

        rf = self.receptive_field
        return {
            "heatmap": self.heatmap.tolist(),
            "input_shape": list(self.input_shape),
            "spatial_shape": list(self.spatial_shape),
            "output": self.output,
            "output_shape": list(self.output_shape),
            "units": [list(u) for u in self.units],
            "num_images": self.num_images,
            "center_of_mass": list(self.center_of_mass),
            "sigma": list(self.sigma),
            "extent": per_fraction(self.extent),
            "interval": per_fraction(self.interval),
            "area": per_fraction(self.area),
            "area_ratio": per_fraction(self.area_ratio),
            "receptive_field": None if rf is None else rf.to_dict(),
            "options": {k: _plain(v) for k, v in self.options.items()},
        }

    def plot(self, fractions: Sequence[float] | None = None, *, ax: Any = None) -> Any:
        """A matplotlib ``Figure`` of the heatmap, the theoretical field's box and the
        contours holding each mass fraction (default: those computed). Never shown.

        Pass ``ax`` (a matplotlib Axes) to draw into an existing figure.
        """
        from rfest._plots._effective import plot_effective_field

        heatmap = self.heatmap
        box = self.rf_box
        title = f"ERF of {self.output or 'the output'}, {self.num_images} images"
        if heatmap.ndim == 3:
            heatmap = heatmap.sum(axis=0)
            box = None if box is None else box[1:]
            title += " (summed over axis 0)"
        stats = heatmap_statistics(heatmap, self.fractions if fractions is None else fractions)
        marks = [(f, stats.level[f], stats.interval[f][0]) for f in stats.fractions]
        return plot_effective_field(heatmap, box, marks, title, ax)

    def __str__(self) -> str:
        ratios = ", ".join(f"{f:g}: {r:.3g}" for f, r in self.area_ratio.items() if r is not None)
        rf = f"; area / theoretical RF {{{ratios}}}" if ratios else ""
        return (
            f"EffectiveField of {self.output or 'the output'!r} at units {self.units} over "
            f"{self.num_images} images of {self.spatial_shape}: centre of mass "
            f"{tuple(round(c, 3) for c in self.center_of_mass)}, sigma "
            f"{tuple(round(s, 3) for s in self.sigma)}{rf}"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
