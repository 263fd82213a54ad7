"""The ``receptivefield`` package's description types (``receptivefield.types``).

Everywhere in `rfest.compat`, ``w``/``x`` is the width (image columns, the last
spatial axis) and ``h``/``y`` the height (image rows, the first spatial axis); rfest
itself lists axes in input order, ``(rows, columns)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "FeatureMapDescription",
    "GridPoint",
    "GridShape",
    "ImageShape",
    "ReceptiveFieldDescription",
    "ReceptiveFieldRect",
    "Size",
    "to_rf_rect",
]


class Size(NamedTuple):
    """Width and height of a field or a feature map."""

    w: int
    h: int


class ImageShape(NamedTuple):
    """Width, height and channels of an image."""

    w: int
    h: int
    c: int = 3


class GridPoint(NamedTuple):
    """A position: ``x`` along the width (column), ``y`` along the height (row)."""

    x: Any
    y: Any


class GridShape(NamedTuple):
    """Batch, width, height and channels of a tensor."""

    n: int
    w: int
    h: int
    c: int

    def replace(self, **kwargs: Any) -> GridShape:
        """A copy with the given fields replaced."""
        return self._replace(**kwargs)


class ReceptiveFieldRect(NamedTuple):
    """A field as a rectangle: centre ``(x, y)`` and size ``(w, h)``."""

    x: Any
    y: Any
    w: Any
    h: Any


class ReceptiveFieldDescription(NamedTuple):
    """``offset``: centre of the top-left unit's field in pixels (``(x, y)``, pixel centres
    at half-integers: rfest's ``offset + 0.5``); ``stride``: ``(x, y)``; ``size``."""

    offset: tuple[float, float]
    stride: tuple[float, float]
    size: Size


class FeatureMapDescription(NamedTuple):
    """``size``: the feature map's width and height; ``rf``: its field."""

    size: Size
    rf: ReceptiveFieldDescription


def to_rf_rect(point: Any, size: Any) -> ReceptiveFieldRect:
    """Rectangle of a field centred at ``point`` (x, y) with ``size`` (w, h)."""
    p, s = GridPoint(*point), Size(*size)
    return ReceptiveFieldRect(x=p.x, y=p.y, w=s.w, h=s.h)
