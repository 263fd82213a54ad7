"""Deciding "global" for a strided output without growing the probe step by step to the cap.

When every probed unit of an output sees the whole probe input, the field is either
global (pooling, attention) or a local field larger than the probe. An output that does
not grow with its input is settled by the estimator's far shape pass. For one that grows
like a strided map (a token grid, a feature map), the first and last units are probed at
the next size the estimator would grow to (a large local field, such as a deep CNN probed
at 32 pixels, stops being whole there and is measured step by step as before) and, if
still whole, at the cap: the verdict the step-by-step growth reaches there (every unit
whole at the cap means global), at the cost of two shape passes and two two-unit probes
instead of a full probe at every size on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rfest._errors import RFEstError
from rfest._support import Interval

__all__ = ["GlobalJump", "jump_for_global"]


@dataclass(frozen=True)
class GlobalJump:
    """``is_global`` when the first and last units see the whole input at size ``n``;
    ``ends``, their supports there when they were probed (where the field reaches from
    each border: the estimator places its next probe by them)."""

    n: int
    is_global: bool
    ends: tuple[Interval, ...] = ()


def jump_for_global(
    n0: int,
    n: int,
    m: int,
    cap: int,
    next_n: int,
    output_len: Callable[[int], int],
    supports: Callable[[int, Sequence[int]], Sequence[Interval]],
) -> GlobalJump | None:
    """Check for a global field of an output of ``m`` units, all whole at input size ``n``.

    None when the output does not grow from ``n`` to ``next_n`` (the far shape pass
    decides). ``output_len(k)`` is the output length at input size ``k``;
    ``supports(k, units)`` the supports of those of the units that have any gradient.
    """
    if n >= cap:  # whole at the cap: global whatever the far shape pass would say
        return GlobalJump(n, is_global=True) if m > 1 else None
    try:
        if n == n0:  # grow once as before: a large local field (a deep CNN at 32 px) shows
            grows = n < next_n and output_len(next_n) > m
            return GlobalJump(n, is_global=False) if grows else None
        if output_len(cap) <= m:
            return None
        ends = _end_supports(cap, output_len, supports)
        return GlobalJump(cap, is_global=_whole(cap, ends), ends=ends)
    except RFEstError:  # a size the model does not take: the step-by-step path decides
        return None


def _end_supports(
    n: int,
    output_len: Callable[[int], int],
    supports: Callable[[int, Sequence[int]], Sequence[Interval]],
) -> tuple[Interval, ...]:
    """Supports of the first and last units at input size ``n`` (fewer when one has no
    gradient, none when the output has a single unit)."""
    units = output_len(n)
    return tuple(supports(n, [0, units - 1])) if units >= 2 else ()


def _whole(n: int, seen: Sequence[Interval]) -> bool:
    """Both end units see all of the input of size ``n`` (but a tail a strided stem cannot
    reach, as for the estimator's probes, and the holes a stride leaves). A field that
    wraps around (circular padding) reaches both ends of the input with most of it
    missing in between: not whole."""
    if len(seen) != 2:
        return False  # an end unit without gradient: not every unit sees everything
    near = min(s.lo for s in seen)
    far = max(s.hi for s in seen)
    return (
        near == 0
        and 4 * far >= 3 * (n - 1)
        and all((s.lo, s.hi) == (near, far) and 4 * s.gap <= n - 1 for s in seen)
    )
