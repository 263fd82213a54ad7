"""Periodic fields: the exact field of every unit after upsampling or transposed convolutions.

Framework-blind, like the estimator it extends, whose probing helpers it reuses. Along an
axis where units differ, their fields repeat: every ``P`` units they move ``Q`` input
pixels, and each phase ``r`` of ``0..P-1`` has its own size and start. This module
measures ``P``, ``Q`` and every phase from the supports of a run of neighbouring units
near the middle, probed in one batched gradient call, with the estimator's care:

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
  per ``Q`` pixels of input (resizing to a fixed size does not).

When no period is found the caller keeps its non-uniform answer (largest size seen).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rfest._estimate import (
    AxisGeometry,
    _gradient_supports,
    _output_len,
    _Probe,
    _with,
)
from rfest._protocol import GradientProvider
from rfest._result import Phase, PhasePattern, ReceptiveField

__all__ = ["PeriodicGeometry", "confirm_periodic", "measure_periodic", "with_patterns"]

_FIRST_RUN = 24  # every phase of a period up to 8 seen three times
_MAX_PERIOD = 64
_GROWTH = 64  # growth step before any period is in sight (a multiple of 2^k strides)
_MAX_PROBES = 16


@dataclass(frozen=True)
class PeriodicGeometry(AxisGeometry):
    """An axis whose units repeat with a period; the base fields read as a non-uniform fit."""

    pattern: PhasePattern


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
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    max_input_size: int,
) -> AxisGeometry | None:
    """Period, step and phases along ``axis``; None when the units show no period.

    A period of 1 is a uniform field: it is returned as a plain uniform geometry.
    """
    n0, m0 = base[axis], base_out[axis]
    cap = max(max_input_size, n0)
    n, m, length = n0, m0, _FIRST_RUN
    for _ in range(_MAX_PROBES):
        run = _unclipped_run(provider, output_name, base, base_out, axis, n, m, length)
        found = run.period(repeats=3) if run is not None else None
        if found is not None and run is not None:
            p, q = found
            if (n - n0) % q == 0:
                if n != n0 and not _grows_by_period(provider, output_name, base, axis, m0, p, q):
                    return None  # measured at another size than the user's, which differs
                return _geometry(run.pattern(p, q), n)
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
        m = _output_len(provider, output_name, base, axis, n)
    return None


def confirm_periodic(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    geometry: PeriodicGeometry,
) -> bool:
    """Every phase, three periods in a row, shows exactly its predicted support.

    ``geometry`` was measured by a cheaper provider (float32, thin in the other axes,
    which can only hide gradient); ``provider`` probes, at the user's size in the other
    axes, the run of units nearest the middle whose predicted fields lie inside the input
    with a pixel to spare on both sides.
    """
    pattern, n = geometry.pattern, geometry.probe_size
    units = _output_len(provider, output_name, base, axis, n)
    inside = [u for u in range(units) if _spare(pattern.box(u), n)]
    length = 3 * pattern.period
    middle_unit = units // 2
    runs = [
        inside[i : i + length]
        for i in range(len(inside) - length + 1)
        if inside[i + length - 1] - inside[i] == length - 1
    ]
    if not runs:
        return False
    run = min(runs, key=lambda r: abs(r[length // 2] - middle_unit))
    middle = tuple(size // 2 for size in base_out)
    supports = _gradient_supports(
        provider, output_name, _with(base, axis, n), [_with(middle, axis, u) for u in run], axis
    )
    return all((s.lo, s.hi + 1) == pattern.box(u) for u, s in zip(run, supports, strict=True))


def _spare(box: tuple[int, int], n: int) -> bool:
    return box[0] >= 1 and box[1] <= n - 1


def _unclipped_run(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    n: int,
    m: int,
    length: int,
) -> _Run | None:
    """The longest stretch of consecutive units near the middle whose ends are unclipped."""
    length = min(length, m)
    first = max(0, min(m // 2 - length // 2, m - length))
    along = tuple(sorted({*range(first, first + length), 0, 1, m - 2, m - 1} & set(range(m))))
    middle = tuple(size // 2 for size in base_out)
    supports = _gradient_supports(
        provider,
        output_name,
        _with(base, axis, n),
        [_with(middle, axis, i) for i in along],
        axis,
    )
    probe = _Probe(n, m, along, tuple(supports))
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


def _geometry(pattern: PhasePattern, n: int) -> AxisGeometry:
    first = pattern.phases[0]
    if pattern.period == 1:
        return AxisGeometry(first.size, pattern.step, -first.start, True, n)
    return PeriodicGeometry(
        size=max(phase.size for phase in pattern.phases),
        stride=max(1, round(pattern.stride)),
        padding=-first.start,
        uniform=False,
        probe_size=n,
        pattern=pattern,
    )


def _grows_by_period(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    axis: int,
    m0: int,
    period: int,
    step: int,
) -> bool:
    """Fields that repeat every ``period`` units, ``step`` pixels on, gain that many units.

    Otherwise (resizing to a fixed size) a pattern measured on a grown probe need not hold
    at the user's size.
    """
    n0 = base[axis]
    return _output_len(provider, output_name, base, axis, n0 + step) == m0 + period


def with_patterns(rf: ReceptiveField, axes: Sequence[AxisGeometry]) -> ReceptiveField:
    """``rf`` carrying the phase patterns of its periodic axes (unchanged when none)."""
    if rf.offset is None or not any(isinstance(a, PeriodicGeometry) for a in axes):
        return rf
    patterns = tuple(_axis_pattern(a) for a in axes)
    offsets = tuple(
        (2 * p.phases[0].start + p.phases[0].size - 1) / 2 if p is not None else o
        for p, o in zip(patterns, rf.offset, strict=True)
    )  # unit 0's centre; unchanged on uniform axes
    return dataclasses.replace(rf, pattern=patterns, offset=offsets)


def _axis_pattern(axis: AxisGeometry) -> PhasePattern | None:
    if isinstance(axis, PeriodicGeometry):
        return axis.pattern
    if not axis.uniform or axis.size is None or axis.stride is None or axis.padding is None:
        return None  # global, or units that differ without a period
    return PhasePattern(1, axis.stride, (Phase(axis.size, -axis.padding),))
