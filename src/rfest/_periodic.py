"""Periodic fields: the exact field of every unit after upsampling or transposed convolutions.

Framework-blind, like the estimator that calls it, and probing through it: the estimator
hands over an `AxisProber` for one axis (its own probing, support reading and clipping
rule), so both measurements read supports the same way. Along an axis where units differ,
their fields repeat: every ``P`` units they move ``Q`` input pixels, and each phase ``r``
of ``0..P-1`` has its own size and start. This module measures ``P``, ``Q`` and every
phase from the supports of a run of neighbouring units near the middle, probed in one
batched gradient call, with the estimator's care:

- only supports that cannot be clipped enter the fit (an end further from the reachable
  input border than the widest hole; the units at both ends are probed to find those
  borders), so units near the borders, whose fields 'same'-style padding cuts, never
  fold into the phases (`ReceptiveField.clipped` names them);
- ``P`` is the smallest period under which every unclipped unit's start and end move by
  the same ``Q``, and every phase must be seen at least three times in a row, so a
  pattern is seen repeating twice before it is believed; runs double (up to periods
  of ``_MAX_PERIOD``) when they show no period;
- the probe input grows (when too few units lie wholly inside) by multiples of ``Q``
  once a period is in sight, so the geometry of the size the user gave is kept; a
  pattern measured on a grown probe counts only if the output gains exactly ``P`` units
  per ``Q`` pixels of input (resizing to a fixed size does not);
- the pattern must hold at a second size, twice as large and a field wider on each side
  (padding inside the network can cut every unit of one probe alike), and a pattern
  measured by a cheaper provider (thin, float32) is confirmed at full width: each time,
  three periods in a row of units predicted inside show exactly their support.

When no period is found the caller keeps its non-uniform answer (largest size seen).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rfest._result import Phase, PhasePattern, ReceptiveField
from rfest._support import Interval

__all__ = [
    "AxisLike",
    "AxisProber",
    "ExactEnds",
    "confirm_periodic",
    "measure_periodic",
    "summary",
    "with_patterns",
]

_FIRST_RUN = 24  # every phase of a period up to 8 seen three times
_MAX_PERIOD = 64
_GROWTH = 64  # growth step before any period is in sight (a multiple of 2^k strides)
_MAX_PROBES = 16


class ExactEnds(Protocol):
    """Starts and ends, by unit, that cannot be clipped by the input's borders."""

    def exact_starts(self) -> dict[int, int]: ...

    def exact_ends(self) -> dict[int, int]: ...


class AxisProber(Protocol):
    """The estimator's probing along one axis, at the user's size in the other axes.

    ``probe(n, units)`` probes ``units`` (and the units at both ends, which show where
    the reachable input ends) at size ``n`` along the axis; ``supports(n, units)`` the
    plain supports of ``units``; ``output_len(n)`` the output's length along the axis.
    """

    @property
    def size(self) -> int: ...

    def output_len(self, n: int) -> int: ...

    def probe(self, n: int, units: Sequence[int]) -> ExactEnds: ...

    def supports(self, n: int, units: Sequence[int]) -> Sequence[Interval]: ...


class AxisLike(Protocol):
    """What `with_patterns` reads of the estimator's per-axis geometry."""

    @property
    def size(self) -> int | None: ...

    @property
    def stride(self) -> int | None: ...

    @property
    def padding(self) -> int | None: ...

    @property
    def uniform(self) -> bool: ...

    @property
    def pattern(self) -> PhasePattern | None: ...


@dataclass(frozen=True)
class _Run:
    """Unclipped supports of consecutive units: ``los[i]``/``his[i]`` of unit ``first + i``."""

    first: int
    los: tuple[int, ...]
    his: tuple[int, ...]

    def period(self, repeats: int) -> tuple[int, int] | None:
        """Smallest ``(P, Q)`` with every start and end ``Q`` on after ``P`` units.

        ``repeats`` is how many times each phase must appear in the run.
        """
        length = len(self.los)
        for p in range(1, length // repeats + 1):
            shifts = {self.los[i + p] - self.los[i] for i in range(length - p)}
            shifts |= {self.his[i + p] - self.his[i] for i in range(length - p)}
            if len(shifts) == 1:
                (q,) = shifts
                if q >= 1:
                    return p, q
        return None

    def pattern(self, period: int, step: int) -> PhasePattern:
        phases: dict[int, Phase] = {}
        for i, (lo, hi) in enumerate(zip(self.los, self.his, strict=True)):
            k, r = divmod(self.first + i, period)
            phases.setdefault(r, Phase(hi - lo + 1, lo - k * step))
        return PhasePattern(period, step, tuple(phases[r] for r in range(period)))


def measure_periodic(
    prober: AxisProber, m0: int, max_input_size: int
) -> tuple[PhasePattern, int] | None:
    """The phase pattern along the prober's axis and the probe size it was measured at.

    ``m0`` is the output's length at the user's size. None when the units show no
    period. A period of 1 is a uniform field.
    """
    n0 = prober.size
    cap = max(max_input_size, n0)
    n, m, length = n0, m0, _FIRST_RUN
    for _ in range(_MAX_PROBES):
        run = _unclipped_run(prober, n, m, length)
        found = run.period(repeats=3) if run is not None else None
        if found is not None and run is not None:
            p, q = found
            if (n - n0) % q == 0:
                if n != n0 and prober.output_len(n0 + q) != m0 + p:
                    return None  # measured at another size than the user's, which differs
                pattern = run.pattern(p, q)
                second = _second_size(pattern, n0, n, cap)
                if second is None or confirm_periodic(prober, pattern, second):
                    return pattern, n
                n = second  # cut alike at this size (padding inside the network): measure there
                m = prober.output_len(n)
                continue
            n = n0 + math.ceil((n - n0) / q) * q  # re-probe at a size that keeps the geometry
            if n > cap:
                return None
        elif run is not None and len(run.los) >= length and length < min(m, 3 * _MAX_PERIOD):
            length = min(2 * length, m, 3 * _MAX_PERIOD)  # all inside: look for a longer period
            continue
        else:
            hint = run.period(repeats=2) if run is not None else None
            growth = hint[1] if hint is not None else _GROWTH
            if n >= cap:
                return None
            n = min(n0 + max(1, math.ceil((2 * n - n0) / growth)) * growth, cap)
        m = prober.output_len(n)
    return None


def _second_size(pattern: PhasePattern, n0: int, n: int, cap: int) -> int | None:
    """A size at least twice ``n`` and a whole field wider on each side, in whole steps.

    Padding inside the network (a dilated layer's outer taps in an intermediate map's
    padding) can cut every probed unit alike; at such a size the middle units are clear
    of it. None when the cap leaves no larger size.
    """
    size = max(phase.size for phase in pattern.phases)
    target = max(2 * n, n + 2 * size)
    second = n0 + math.ceil((target - n0) / pattern.step) * pattern.step
    if second > cap:
        second = n0 + (cap - n0) // pattern.step * pattern.step
    return second if second > n else None


def summary(pattern: PhasePattern) -> tuple[int, int, int]:
    """``(size, stride, padding)`` read as today's fields: the largest phase's size, the
    mean stride rounded (at least 1), unit 0's padding."""
    return (
        max(phase.size for phase in pattern.phases),
        max(1, round(pattern.stride)),
        -pattern.phases[0].start,
    )


def confirm_periodic(prober: AxisProber, pattern: PhasePattern, n: int) -> bool:
    """Every phase, three periods in a row, shows exactly its predicted support at size ``n``.

    The pattern was measured by a cheaper provider (float32, thin in the other axes,
    which can only hide gradient); ``prober`` probes, at the user's size in the other
    axes, the run of units nearest the middle whose predicted fields lie inside the input
    with a pixel to spare on both sides.
    """
    units = prober.output_len(n)
    inside = [u for u in range(units) if _spare(pattern.box(u), n)]
    length = 3 * pattern.period
    runs = [
        inside[i : i + length]
        for i in range(len(inside) - length + 1)
        if inside[i + length - 1] - inside[i] == length - 1
    ]
    if not runs:
        return False
    run = min(runs, key=lambda r: abs(r[length // 2] - units // 2))
    supports = prober.supports(n, run)
    return all((s.lo, s.hi + 1) == pattern.box(u) for u, s in zip(run, supports, strict=True))


def _spare(box: tuple[int, int], n: int) -> bool:
    return box[0] >= 1 and box[1] <= n - 1


def _unclipped_run(prober: AxisProber, n: int, m: int, length: int) -> _Run | None:
    """The longest stretch of consecutive units near the middle whose ends are unclipped."""
    length = min(length, m)
    first = max(0, min(m // 2 - length // 2, m - length))
    probe = prober.probe(n, range(first, first + length))
    starts, ends = probe.exact_starts(), probe.exact_ends()
    best: list[int] = []
    current: list[int] = []
    for unit in range(first, first + length):
        if unit in starts and unit in ends:
            current.append(unit)
            if len(current) > len(best):
                best = list(current)
        else:
            current = []
    if not best:
        return None
    return _Run(best[0], tuple(starts[u] for u in best), tuple(ends[u] for u in best))


def with_patterns(rf: ReceptiveField, axes: Sequence[AxisLike]) -> ReceptiveField:
    """``rf`` carrying the phase patterns of its periodic axes (unchanged when none)."""
    if rf.offset is None or not any(a.pattern is not None for a in axes):
        return rf
    patterns = tuple(_axis_pattern(a) for a in axes)
    offsets = tuple(
        (2 * p.phases[0].start + p.phases[0].size - 1) / 2 if p is not None else o
        for p, o in zip(patterns, rf.offset, strict=True)
    )  # unit 0's centre; unchanged on uniform axes
    return dataclasses.replace(rf, pattern=patterns, offset=offsets)


def _axis_pattern(axis: AxisLike) -> PhasePattern | None:
    if axis.pattern is not None:
        return axis.pattern
    if not axis.uniform or axis.size is None or axis.stride is None or axis.padding is None:
        return None  # global, or units that differ without a period
    return PhasePattern(1, axis.stride, (Phase(axis.size, -axis.padding),))
