"""Output units named by spatial index, as the plots and `gradient_map` take them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rfest._errors import InputShapeError

__all__ = ["resolve_unit"]


def resolve_unit(unit: int | Sequence[int] | None, out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``unit`` as non-negative indices into ``out_shape``; None is the centre unit."""
    if unit is None:
        return tuple(m // 2 for m in out_shape)
    index = (unit,) if isinstance(unit, (int, np.integer)) else tuple(unit)
    if len(index) != len(out_shape):
        raise InputShapeError(
            f"unit {unit!r} has {len(index)} axes; the output has spatial shape {out_shape}"
        )
    resolved = []
    for i, m in zip(index, out_shape, strict=True):
        k = int(i) + m if int(i) < 0 else int(i)
        if not 0 <= k < m:
            raise InputShapeError(
                f"unit {unit!r} lies outside the output, whose spatial shape is {out_shape}"
            )
        resolved.append(k)
    return tuple(resolved)
