"""The estimator: fit size, stride and padding per axis from the support of gradient maps.

Framework-blind: it sees a :class:`~rfest.GradientProvider` and numpy arrays only.

Along each spatial axis it probes a run of neighbouring output units near the middle plus
the units at both ends, in one batched gradient call per probe size, and reads where each
unit's gradient is non-zero. An end of a support that lies more than the largest observed
hole away from the input border cannot be clipped; only such ends enter the fit. When no
unit is wholly inside the input, the probe input grows along that axis only, by multiples
of the total stride once that is known, so the geometry of the size the user gave (which
'same' padding depends on) is kept. Units must agree on stride and offset at every
position probed; otherwise the field is reported as non-uniform.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np

from rfest._errors import (
    EstimationError,
    InputShapeError,
    NoDependenceError,
    NonFiniteGradientError,
    ProbeSizeError,
    RFEstError,
    SizeDependentGeometryError,
)
from rfest._global import GlobalJump, jump_for_global
from rfest._periodic import confirm_periodic, measure_periodic, summary, with_patterns
from rfest._protocol import GradientProvider
from rfest._result import PhasePattern, ReceptiveField
from rfest._support import Interval, axis_supports

__all__ = ["DEFAULT_FREE_SIZE", "DEFAULT_MAX_INPUT_SIZE", "AxisGeometry", "estimate"]

DEFAULT_FREE_SIZE = 32
"""Spatial size probed first along an axis the user left free (``None``)."""

DEFAULT_MAX_INPUT_SIZE = 4096
"""Largest probe size along one axis before rfest gives up (option ``max_input_size``)."""

# An output that gains no unit over this many more input pixels (4 x the default cap) has
# a stride no measurable field could have: it is a global reduction. Kept far below the
# 64 x cap once used, so that the shape pass stays small enough to compute for real.
_FAR = 4 * DEFAULT_MAX_INPUT_SIZE
_THIN_SIZE = 16  # size of the other axes while one axis is measured (then confirmed)
_RUN_HALF_WIDTH = 2  # a run of 5 neighbours: four steps see any phase pattern of period <= 4
# The second-size check (a 4-unit probe, thin in the other axes) runs at no less than this:
# cheap for small fields, it catches dilated taps cut in intermediate padding that jump
# further than twice the probe size (a field cut alike at both sizes): a dilated layer
# whose taps reach past a whole small intermediate map, e.g. dilation 16 after stride 32.
_SECOND_SIZE_FLOOR = 1024


@dataclass(frozen=True)
class AxisGeometry:
    """What the estimator found along one spatial axis; ``size`` None means global."""

    size: int | None
    stride: int | None
    padding: int | None
    uniform: bool
    probe_size: int
    pattern: PhasePattern | None = None  # a non-uniform axis whose units repeat


@dataclass(frozen=True)
class _Probe:
    """Supports of the probed units along one axis at one probe size (immutable: its
    derived properties are computed once)."""

    n: int
    m: int
    units: tuple[int, ...]
    supports: tuple[Interval, ...]
    run: tuple[int, ...] = ()
    dead_ends: tuple[bool, bool] = (False, False)  # unit 0, unit m - 1 see only padding

    @cached_property
    def near(self) -> int:
        """First input index any probed unit reaches (the ends are always probed).

        Layers that drop border pixels ('valid' strided stems, cropping) can leave the ends
        of the input unreachable: a field running past them is clipped there, not at the
        input's ends, so the borders that count are the reachable ones. An end unit that
        sees only padding says nothing of the reach: the input's end is taken then (the
        second-size check catches a field clipped short of it).
        """
        return 0 if self.dead_ends[0] else min(s.lo for s in self.supports)

    @cached_property
    def far(self) -> int:
        """Last input index any probed unit reaches."""
        return self.n - 1 if self.dead_ends[1] else max(s.hi for s in self.supports)

    @cached_property
    def gap(self) -> int:
        """Widest hole inside the supports of the run's units that touch neither border.

        The end units are left out: reflect and circular padding fold or wrap their
        supports (even ones that touch no border), which opens holes the field itself
        does not have.
        """
        run = set(self.run) or set(self.units)
        return max(
            (
                s.gap
                for i, s in zip(self.units, self.supports, strict=True)
                if i in run and self.near < s.lo and s.hi < self.far
            ),
            default=0,
        )

    @property
    def whole(self) -> bool:
        """Every unit sees all of the input (but a tail a strided stem cannot reach)."""
        near, far = self.near, self.far
        return (
            near == 0
            and 4 * far >= 3 * (self.n - 1)
            and all((s.lo, s.hi) == (near, far) for s in self.supports)
        )

    def exact_starts(self) -> dict[int, int]:
        """Starts that cannot be clipped: further from the near border than any hole is wide."""
        limit = self.near + self.gap
        return {i: s.lo for i, s in zip(self.units, self.supports, strict=True) if s.lo > limit}

    def exact_ends(self) -> dict[int, int]:
        limit = self.far - self.gap
        return {i: s.hi for i, s in zip(self.units, self.supports, strict=True) if s.hi < limit}


@dataclass(frozen=True)
class _Stride:
    value: int
    uniform: bool


def estimate(
    provider: GradientProvider,
    output_name: str,
    *,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    scout: GradientProvider | None = None,
) -> ReceptiveField:
    """Receptive field of ``output_name``, measured through ``provider``.

    ``scout``, when given, is a cheaper provider (float32) for the thin exploratory probes;
    every answer it suggests is confirmed by ``provider`` before it is returned.
    """
    base = _base_shape(provider.spatial_shape)
    out_shape = _output_shape(provider, base, output_name)
    if any(size < 1 for size in out_shape):
        raise EstimationError(
            f"output {output_name!r} is empty ({out_shape}) for input {base}: the input is "
            f"smaller than the network can take; pass a larger input_shape"
        )
    if len(out_shape) == 0:
        axes = _no_spatial_axes(provider, base, output_name)
    elif len(out_shape) != len(base):
        raise EstimationError(
            f"output {output_name!r} has {len(out_shape)} spatial axes {out_shape}, the input "
            f"has {len(base)} {base}: rfest cannot tell which output axis follows which input "
            f"axis; choose an output that keeps the input's spatial axes"
        )
    elif getattr(provider, "thin_probes", True):
        axes = _measure_axes_thin_first(
            provider, scout or provider, output_name, base, out_shape, max_input_size
        )
    else:  # every probe shape costs the backend more than its size does (a compilation)
        twins = _twins(provider, output_name, base)
        measured = {
            axis: _measure_axis(provider, output_name, base, out_shape, axis, max_input_size)
            for axis in set(twins)
        }
        axes = [measured[twin] for twin in twins]
    return with_patterns(_result(output_name, base, out_shape, axes), axes)


def _measure_axes_thin_first(
    provider: GradientProvider,
    scout: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    max_input_size: int,
) -> list[AxisGeometry]:
    """Measure each axis on an input thin in the other axes, then confirm at full width.

    Thin probes (run by ``scout``) cost a fraction of full ones. Clipping the other axes
    and float32 underflow can only hide gradient, never add it, so a probe by
    ``provider`` confirms each thin answer: the unit predicted to lie furthest inside must
    show exactly the predicted support. One probe, grown along every axis to hold that
    unit, confirms all axes at once (unless it is larger than one probe per axis); if any
    axis fails it, each axis is confirmed on its own at the user's size in the other axes.
    Whatever goes wrong on the thin path (a mismatch, overflow, a failed fit) sends the
    axis to a full measurement by ``provider``, which has the last word.
    """
    twins = _twins(provider, output_name, base)
    scouted: dict[int, AxisGeometry] = {}
    for axis in sorted(set(twins)):
        thin = _thin_shape(scout, output_name, base, axis)
        if thin is None:
            continue
        try:
            thin_out = _output_shape(scout, thin, output_name)
            scouted[axis] = _measure_axis(scout, output_name, thin, thin_out, axis, max_input_size)
        except RFEstError:
            continue
    bounded = {axis: g for axis, g in scouted.items() if g.size is not None}
    confirmed = {axis for axis, g in scouted.items() if g.size is None}
    if bounded:
        jointly = (
            _confirmed_jointly(provider, output_name, base, base_out, bounded)
            if _joint_probe_is_smaller(base, base_out, bounded)
            else set()
        )
        if jointly == set(bounded):
            confirmed |= jointly
        else:
            confirmed |= {
                axis
                for axis, geometry in bounded.items()
                if _confirmed(provider, output_name, base, base_out, axis, geometry)
            }
    answers = {
        axis: scouted[axis]
        if axis in confirmed
        else _measure_axis(provider, output_name, base, base_out, axis, max_input_size)
        for axis in set(twins)
    }
    return [answers[twin] for twin in twins]


def _twins(provider: GradientProvider, output_name: str, base: tuple[int, ...]) -> list[int]:
    """For each axis, the axis measured for it: itself or, where the provider proves that
    the output treats its spatial axes alike (``axes_alike``), the last axis of the same
    size. The last: on a row-major input its thin probes are long rows, the cheapest
    (NASNetMobile on TensorFlow: half the time of long columns)."""
    alike = getattr(provider, "axes_alike", None)
    if alike is None or len(set(base)) == len(base) or not alike(output_name):
        return list(range(len(base)))
    return [max(a for a, n in enumerate(base) if n == size) for size in base]


def _thin_shape(
    provider: GradientProvider, output_name: str, base: tuple[int, ...], axis: int
) -> tuple[int, ...] | None:
    """``base`` cut in the other axes to the thinnest of 16, 32, 64... the model runs on.

    Sizes past 16 are tried while they stay under half the user's size, then narrowed
    down between the last size refused and the first taken: a network that needs 75
    pixels ('valid' stems) is probed 75 wide, not 128 (InceptionV3's thin probes: 40%
    fewer pixels) or at full width.
    """
    widest = max((n for a, n in enumerate(base) if a != axis), default=0)
    thinnest = _THIN_SIZE
    while True:
        thin = _thinned(base, axis, thinnest)
        if thin == base or (thinnest > _THIN_SIZE and 2 * thinnest > widest):
            return None
        if _runs_thin(provider, output_name, thin):
            break
        thinnest *= 2
    refused = thinnest // 2 if thinnest > _THIN_SIZE else thinnest
    while thinnest - refused > 1:  # the predicate need not be monotone: any size it takes
        middle = (refused + thinnest) // 2
        if _runs_thin(provider, output_name, _thinned(base, axis, middle)):
            thinnest = middle
        else:
            refused = middle
    return _thinned(base, axis, thinnest)


def _thinned(base: tuple[int, ...], axis: int, width: int) -> tuple[int, ...]:
    return tuple(n if a == axis else min(n, width) for a, n in enumerate(base))


def _runs_thin(provider: GradientProvider, output_name: str, thin: tuple[int, ...]) -> bool:
    try:
        out = _output_shape(provider, thin, output_name)
    except RFEstError:
        return False
    return len(out) == len(thin) and all(m >= 1 for m in out)


def _joint_probe_is_smaller(
    base: tuple[int, ...], base_out: tuple[int, ...], geometries: dict[int, AxisGeometry]
) -> bool:
    """One probe grown along every axis is no larger than one probe per axis in all."""
    grown = list(base)
    for axis, geometry in geometries.items():
        check = _check(base[axis], base_out[axis], geometry)
        grown[axis] = geometry.probe_size if check is None else check.n
    per_axis = sum(math.prod(_with(base, a, grown[a])) for a in geometries)
    return math.prod(grown) <= per_axis


@dataclass(frozen=True)
class _Check:
    """A unit predicted to lie wholly inside a probe of size ``n``, and its support."""

    n: int
    unit: int
    start: int
    end: int


def _check(base_n: int, base_m: int, geometry: AxisGeometry) -> _Check | None:
    """A unit predicted to lie wholly inside a probe, a pixel clear of each end, at the
    smallest size from the user's in whole strides up to the one the geometry was measured
    at: the unit nearest that probe's middle.

    A probe just large enough shows any other support as well as a larger one does (the
    true support, if it differs, either differs inside or reaches an end pixel), at a
    fraction of the cost when the field is far larger than the input (DenseNet121 at 224:
    2080 pixels instead of 3808)."""
    size, stride, padding = geometry.size, geometry.stride, geometry.padding
    if not geometry.uniform or size is None or stride is None or padding is None:
        return None
    first = -(-(1 + padding) // stride)  # the first unit whose field starts at 1 or later
    holds = first * stride - padding + size + 1  # ... and ends a pixel before that size
    k = max(0, -(-(holds - base_n) // stride), first - base_m + 1)
    for n in range(base_n + k * stride, geometry.probe_size, stride):
        check = _centred_check(base_n, base_m, n, size, stride, padding)
        if check is not None:
            return check
    return _centred_check(base_n, base_m, geometry.probe_size, size, stride, padding)


def _centred_check(
    base_n: int, base_m: int, n: int, size: int, stride: int, padding: int
) -> _Check | None:
    """The unit nearest the middle of a probe of size ``n``, if it lies wholly inside."""
    units_along = base_m + (n - base_n) // stride  # checked by _check_growth
    unit = round(((n - 1) / 2 - ((size - 1) / 2 - padding)) / stride)
    unit = min(max(unit, 0), units_along - 1)
    start = unit * stride - padding
    if start < 1 or start + size > n - 1:
        return None
    return _Check(n, unit, start, start + size - 1)


def _confirmed(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    geometry: AxisGeometry,
) -> bool:
    """The predicted unit's support along ``axis`` at the user's size in the other axes."""
    if geometry.pattern is not None:
        prober = _AxisProber(provider, output_name, base, base_out, axis)
        return confirm_periodic(prober, geometry.pattern, geometry.probe_size)
    check = _check(base[axis], base_out[axis], geometry)
    if check is None:
        return False
    middle = tuple(m // 2 for m in base_out)
    spatial = _with(base, axis, check.n)
    maps = _gradient_maps(provider, output_name, spatial, [_with(middle, axis, check.unit)])
    (support,) = axis_supports(maps, axis)
    return support is not None and (support.lo, support.hi) == (check.start, check.end)


def _confirmed_jointly(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    geometries: dict[int, AxisGeometry],
) -> set[int]:
    """Axes whose predicted support one probe, grown along all of them, shows exactly."""
    checks = {a: _check(base[a], base_out[a], g) for a, g in geometries.items()}
    spatial, unit = list(base), [m // 2 for m in base_out]
    for axis, check in checks.items():
        if check is None:
            return set()
        spatial[axis], unit[axis] = check.n, check.unit
    maps = _gradient_maps(provider, output_name, tuple(spatial), [tuple(unit)])
    confirmed = set()
    for axis, check in checks.items():
        (support,) = axis_supports(maps, axis)
        if (
            check is not None
            and support is not None
            and (support.lo, support.hi) == (check.start, check.end)
        ):
            confirmed.add(axis)
    return confirmed


def _result(
    output_name: str,
    base: tuple[int, ...],
    out_shape: tuple[int, ...],
    axes: Sequence[AxisGeometry],
) -> ReceptiveField:
    is_global = all(a.size is None for a in axes)
    offsets = tuple(
        None if a.size is None or a.padding is None else (a.size - 1) / 2 - a.padding for a in axes
    )
    return ReceptiveField(
        size=None if is_global else tuple(a.size for a in axes),
        stride=None if is_global else tuple(a.stride for a in axes),
        padding=None if is_global else tuple(a.padding for a in axes),
        offset=None if is_global else offsets,
        input_shape=base,
        output_shape=out_shape,
        is_global=is_global,
        uniform=all(a.uniform for a in axes),
        probe_shape=tuple(a.probe_size for a in axes),
        output=output_name,
    )


def _base_shape(spatial_shape: Sequence[int | None]) -> tuple[int, ...]:
    base = []
    for axis, size in enumerate(spatial_shape):
        if size is None:
            base.append(DEFAULT_FREE_SIZE)
        elif isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
            base.append(int(size))
        else:
            raise InputShapeError(
                f"spatial size {size!r} on axis {axis} is not a positive integer; "
                f"give each spatial size as an int >= 1, or None to let rfest choose"
            )
    if not 1 <= len(base) <= 3:
        raise InputShapeError(f"the input has {len(base)} spatial axes; rfest supports 1, 2 or 3")
    return tuple(base)


def _output_shape(
    provider: GradientProvider, spatial: tuple[int, ...], output_name: str
) -> tuple[int, ...]:
    return tuple(int(s) for s in provider.output_shapes(spatial)[output_name])


def _gradient_supports(
    provider: GradientProvider,
    output_name: str,
    spatial: tuple[int, ...],
    units: Sequence[tuple[int, ...]],
    axis: int,
) -> list[Interval]:
    maps = _gradient_maps(provider, output_name, spatial, units)
    return _axis_supports(maps, output_name, spatial, units, axis)


def _gradient_maps(
    provider: GradientProvider,
    output_name: str,
    spatial: tuple[int, ...],
    units: Sequence[tuple[int, ...]],
) -> np.ndarray:
    maps = np.asarray(provider.gradient_maps(spatial, output_name, units))
    expected = (len(units), *spatial)
    if maps.shape != expected:
        raise EstimationError(
            f"the backend returned gradient maps of shape {maps.shape} for output "
            f"{output_name!r}; expected {expected} (one map per probed unit)"
        )
    if not np.all(np.isfinite(maps)):
        raise NonFiniteGradientError(
            f"the gradient of output {output_name!r} holds NaN or infinity at input size "
            f"{spatial}; the model overflows or divides by zero on a positive input. Try "
            f"dtype='float64', linearize=True, or an output earlier in the network"
        )
    return maps


def _axis_supports(
    maps: np.ndarray,
    output_name: str,
    spatial: tuple[int, ...],
    units: Sequence[tuple[int, ...]],
    axis: int,
) -> list[Interval]:
    supports = axis_supports(maps, axis)
    for unit, support in zip(units, supports, strict=True):
        if support is None:
            raise NoDependenceError(
                f"output {output_name!r} unit {unit} does not depend on the input (its "
                f"gradient is zero everywhere at input size {spatial}). Check that the output "
                f"is computed from this input, or use linearize=True so activations cannot "
                f"block the gradient"
            )
    return supports  # type: ignore[return-value]


def _no_spatial_axes(
    provider: GradientProvider, base: tuple[int, ...], output_name: str
) -> list[AxisGeometry]:
    axes = []
    for axis, n in enumerate(base):
        (support,) = _gradient_supports(provider, output_name, base, [()], axis)
        if (support.lo, support.hi) != (0, n - 1):
            raise EstimationError(
                f"output {output_name!r} has no spatial axes but depends only on input "
                f"indices {support.lo}..{support.hi} of {n} along axis {axis}; rfest cannot "
                f"map it back onto the input grid. Choose an output with spatial axes"
            )
        axes.append(AxisGeometry(None, None, None, True, n))
    return axes


def _measure_axis(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    max_input_size: int,
) -> AxisGeometry:
    n0 = base[axis]
    n, m = n0, base_out[axis]
    stride: _Stride | None = None
    centre = m // 2
    cap = max(max_input_size, n0)
    periodic_tried = False
    realigned = False  # went back from the cap to a size that keeps the user's residue
    placed = misplaced = False  # the run placed on the first unit predicted inside; in vain
    whole_at_base = False
    placement: AxisGeometry | None = None  # where the ends at the cap put the field
    while True:
        probe = _probe(provider, output_name, base, base_out, axis, n, m, centre)
        whole_at_base = whole_at_base or (n == n0 and probe.whole and m > 1)
        grow_to: int | None = None
        fit: AxisGeometry | None = None
        if probe.whole:
            jump = jump_for_global(
                n0,
                n,
                m,
                cap,
                _next_size(probe, n0, stride, cap)[0],
                lambda k: _output_len(provider, output_name, base, axis, k),
                lambda k, ends: _end_supports(provider, output_name, base, axis, k, ends),
            )
            if jump is not None and jump.is_global:
                return AxisGeometry(None, None, None, True, jump.n)  # attention and the like
            if jump is not None and jump.ends:
                placement = _placed_by_ends(
                    jump, probe, _output_len(provider, output_name, base, axis, jump.n)
                )
            if jump is None:
                if _far_output_len(provider, output_name, base, axis, n + max(_FAR, 4 * cap)) == m:
                    return AxisGeometry(None, None, None, True, n)  # global pooling and the like
                if n >= cap and m > 1:
                    return AxisGeometry(None, None, None, True, n)  # squeeze-excite, attention
        else:
            stride = _stride(probe) or stride
            fit = _fit(probe, stride)
            if fit is not None and not fit.uniform and not periodic_tried:
                periodic_tried = True  # rfest._periodic grows and checks on its own
                periodic = _periodic_fit(
                    provider, output_name, base, base_out, axis, max_input_size
                )
                if periodic is not None:
                    return periodic
            if fit is not None and fit.stride is not None:
                stride = _Stride(fit.stride, fit.uniform)
                if (n - n0) % fit.stride == 0:
                    if _check_growth(provider, output_name, base, axis, base_out[axis], fit):
                        verdict = _second_size(provider, output_name, base, axis, n0, fit, cap)
                        if isinstance(verdict, AxisGeometry):
                            return verdict
                        grow_to = verdict
                    else:
                        stride, fit = None, None  # a stride the output length denies
            misplaced = misplaced or (placed and fit is None)
        if n >= cap and grow_to is None and not realigned:
            grow_to = _aligned_below_cap(n0, n, cap, fit)
            realigned = grow_to is not None
        if n >= cap and grow_to is None:
            _refuse_moved_axes(provider, output_name, base, base_out, axis)
            seen = (
                "its single unit sees the whole input at every size up to"
                if probe.whole
                else "no unit's field lies wholly inside a probe input of size"
            )
            hint = (
                f" Every unit sees the whole input at the size given ({n0}): if the field "
                f"depends on the input size (grid attention whose spacing scales with the "
                f"input, as in MaxViT), it has no size-independent description, and at "
                f"{n0} it is global."
                if whole_at_base and not probe.whole
                else ""
            )
            raise ProbeSizeError(
                f"the receptive field of output {output_name!r} along axis {axis} does not "
                f"fit: {seen} {n} (the cap). Raise the cap with max_input_size=..., or "
                f"choose an earlier output.{hint}"
            )
        if grow_to is not None:
            n, inside = grow_to, None
        elif stride is None and placement is not None:
            assert placement.stride is not None
            n, inside = _next_size(probe, n0, _Stride(placement.stride, True), cap, placement)
            placement = None  # once: if the field is not there, growth goes on as before
        else:
            n, inside = _next_size(probe, n0, stride, cap, fit)
        try:
            n, m = _runnable(provider, output_name, base, axis, n0, n, stride, cap)
        except RFEstError:
            if probe.whole and probe.m > 1:
                # every unit sees all of the largest input the model takes (a ViT whose
                # position table fixes its token count): global at every size it runs at
                return AxisGeometry(None, None, None, True, probe.n)
            raise
        placed = inside is not None and not misplaced
        centre = min(inside, m - 1) if inside is not None and placed else m // 2


def _placed_by_ends(jump: GlobalJump, probe: _Probe, m_at_jump: int) -> AxisGeometry | None:
    """Where the end units probed at the cap (not whole there) put the field: unit 0's
    support ends at ``size - padding - 1``, the last unit's starts at ``(m - 1) * stride -
    padding``, and the stride is what the output gains per input pixel between the
    current probe and the cap. Only where to probe next, instead of growing four-fold
    while every unit is clipped (DenseNet121: 2112 pixels instead of 3808); the probe
    there is fitted and checked like any other. None when the ends do not tell.

    The size comes with a stride to spare: at a cap of another residue, 'same' padding
    can move the ends by less than a stride."""
    if len(jump.ends) != 2 or m_at_jump <= probe.m:
        return None
    first, last = jump.ends
    if first.hi >= jump.n - 1 or last.lo <= 0:
        return None
    stride = round((jump.n - probe.n) / (m_at_jump - probe.m))
    padding = (m_at_jump - 1) * stride - last.lo
    size = first.hi + 1 + padding
    if stride < 1 or size < 1:
        return None
    return AxisGeometry(size + stride, stride, padding, True, jump.n)


def _refuse_moved_axes(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
) -> None:
    """Raise when growing the input along ``axis`` alone changes another output axis.

    rfest pairs output axis i with input axis i; a model that moves spatial axes
    (``Permute``, a transpose) breaks that pairing, and no probe size fits a field then.
    Checked only once the probe has reached the cap, so it costs nothing otherwise."""
    try:
        grown = _output_shape(provider, _with(base, axis, 2 * base[axis]), output_name)
    except RFEstError:
        return
    moved = [
        b for b in range(len(base_out)) if b != axis and grown[b : b + 1] != base_out[b : b + 1]
    ]
    if moved:
        raise EstimationError(
            f"output {output_name!r} changes along axis {moved[0]} (from {base_out} to "
            f"{grown}) when the input grows along axis {axis} only: the model moves spatial "
            f"axes (Permute, a transpose, a reshape across axes), and rfest pairs output "
            f"axis i with input axis i. Measure an output before the axes move, or move them "
            f"back before the output"
        )


def _end_supports(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    axis: int,
    n: int,
    ends: Sequence[int],
) -> tuple[Interval, ...]:
    """Supports of the units ``ends`` along ``axis`` at size ``n``, on an input thin in the
    other axes: at the cap a full-width probe of an attention model holds tokens**2 scores
    (gigabytes), and thinning can only hide gradient, so whole ends stay a sound verdict."""
    thin = _thin_shape(provider, output_name, base, axis) or base
    thin_out = _output_shape(provider, thin, output_name)
    return _probe(provider, output_name, thin, thin_out, axis, n, 0, 0, ends).supports


def _aligned_below_cap(n0: int, n: int, cap: int, fit: AxisGeometry | None) -> int | None:
    """The largest size up to the cap that keeps the user's size modulo a uniform fit's
    stride, when the probe at the cap (``n``) does not: growth that doubled while the
    stride was unknown can land there, and a fit is only accepted at such sizes."""
    if fit is None or not fit.uniform or fit.stride is None or (n - n0) % fit.stride == 0:
        return None
    aligned = n0 + ((cap - n0) // fit.stride) * fit.stride
    return aligned if n0 < aligned < n else None


def _second_size(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    axis: int,
    n0: int,
    fit: AxisGeometry,
    cap: int,
) -> AxisGeometry | int:
    """The fit, once a larger probe (same residue) agrees with it; else the size to probe.

    Padding inside the network can cut a field at a point inside the input (a dilated
    layer whose outer taps land in an intermediate map's padding); every unit of the
    probe may be cut alike, so nothing in that probe shows it. At a size at least twice
    as large (and at least ``_SECOND_SIZE_FLOOR``), with the middle unit clear of the
    borders by a whole field on each side, such a cut field shows unless its cut taps
    jump further than that size (no finite probe can rule that out): the middle unit,
    its neighbour (which pins the stride: a unit that sees only folded or wrapped padding
    can line up with one real unit by chance) and the end units must see what the fit
    predicts.
    A non-uniform fit is measured again there in full: cut and folded fields look
    non-uniform at one size and not at a larger one.
    """
    if fit.stride is None or fit.size is None or fit.padding is None:
        return fit
    s, n = fit.stride, fit.probe_size
    target = max(2 * n, n + 2 * fit.size, _SECOND_SIZE_FLOOR)
    n2 = n0 + math.ceil((target - n0) / s) * s
    if n2 > cap:
        n2 = n0 + ((cap - n0) // s) * s
    if n2 <= n:
        return fit
    if not fit.uniform:
        return n2
    try:
        n2, m2 = _runnable(provider, output_name, base, axis, n0, n2, _Stride(s, True), cap)
    except RFEstError:
        return fit
    if n2 <= n:
        return fit
    if _border_free(provider, output_name, _with(base, axis, n), _with(base, axis, n2)):
        return fit
    middle = round(((n2 - 1) / 2 - ((fit.size - 1) / 2 - fit.padding)) / s)
    middle = min(max(middle, 0), m2 - 1)
    spatial = _with(base, axis, n2)
    others = tuple(size // 2 for size in _output_shape(provider, spatial, output_name))
    units_along = tuple(sorted({0, middle, min(middle + 1, m2 - 1), m2 - 1}))
    units = [_with(others, axis, i) for i in units_along]
    try:
        maps = _gradient_maps(provider, output_name, spatial, units)
    except NonFiniteGradientError:
        return fit  # an overflow at the larger size: the check cannot be read there
    supports = axis_supports(maps, axis)
    live = [(i, sup) for i, sup in zip(units_along, supports, strict=True) if sup is not None]
    if not live:
        return n2
    probe = _Probe(n2, m2, tuple(i for i, _ in live), tuple(sup for _, sup in live), (middle,))
    start = middle * s - fit.padding
    inside = probe.near <= start and start + s + fit.size - 1 <= probe.far
    if inside and _consistent(probe, s, fit.padding, fit.size):
        return fit
    return n2


def _border_free(
    provider: GradientProvider, output_name: str, *spatial_shapes: tuple[int, ...]
) -> bool:
    """Whether the provider proves that no unit's field meets a border at these sizes.

    Such a field is the same at every size, shifted by the stride, so no padding can cut
    it and the check at a second size would find what the fit predicts (the JAX backend
    proves it from the traced program, see ``rfest_jax._borders``). Optional provider
    member ``border_free(spatial_shape, output_name)``; without it the check runs.
    """
    check = getattr(provider, "border_free", None)
    return callable(check) and all(bool(check(s, output_name)) for s in spatial_shapes)


def _probe(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    n: int,
    m: int,
    centre: int,
    units_along: Sequence[int] = (),
) -> _Probe:
    spatial = _with(base, axis, n)
    units_along = tuple(units_along) or _probe_units(m, centre)
    middle = tuple(size // 2 for size in base_out)
    units = [_with(middle, axis, i) for i in units_along]
    maps = _gradient_maps(provider, output_name, spatial, units)
    supports = axis_supports(maps, axis)
    live = [(i, sup) for i, sup in zip(units_along, supports, strict=True) if sup is not None]
    if not live:
        _axis_supports(maps, output_name, spatial, units, axis)  # raises NoDependenceError
    width = 2 * _RUN_HALF_WIDTH + 1
    start = min(max(0, centre - _RUN_HALF_WIDTH), max(0, m - width))
    run = tuple(i for i, _ in live if start <= i < start + width)
    dead = (supports[0] is None, supports[-1] is None)
    return _Probe(n, m, tuple(i for i, _ in live), tuple(sup for _, sup in live), run, dead)


def _probe_units(m: int, centre: int) -> tuple[int, ...]:
    """A run of neighbours around ``centre`` (phases, stride) plus both ends (reach)."""
    width = 2 * _RUN_HALF_WIDTH + 1
    start = min(max(0, centre - _RUN_HALF_WIDTH), max(0, m - width))
    run = range(start, min(m, start + width))
    return tuple(sorted({*run, 0, 1, m - 2, m - 1} & set(range(m))))


def _stride(probe: _Probe) -> _Stride | None:
    """Total stride from the exactly known starts and ends; None when fewer than two.

    Every step between probed neighbours and the slope across the widest span must be
    the same integer; otherwise the units do not share one geometry.
    """
    steps: set[Fraction] = set()
    widest: tuple[int, Fraction] | None = None
    for positions in (probe.exact_starts(), probe.exact_ends()):
        units = sorted(positions)
        steps.update(
            Fraction(positions[b] - positions[a], b - a) for a, b in itertools.pairwise(units)
        )
        if len(units) >= 2:
            span = units[-1] - units[0]
            slope = Fraction(positions[units[-1]] - positions[units[0]], span)
            if widest is None or span > widest[0]:
                widest = (span, slope)
    if widest is None:
        return None
    slope = widest[1]
    if len(steps) == 1 and slope.denominator == 1 and slope >= 1:
        return _Stride(int(slope), uniform=True)
    return _Stride(max(1, round(slope)), uniform=False)


def _candidate_strides(probe: _Probe, hint: _Stride | None) -> list[int]:
    """Integer slopes between exactly known starts (or ends), the most frequent first."""
    votes: dict[int, int] = {}
    for positions in (probe.exact_starts(), probe.exact_ends()):
        for a, b in itertools.combinations(sorted(positions), 2):
            slope, rest = divmod(positions[b] - positions[a], b - a)  # b > a
            if rest == 0 and slope >= 1:
                votes[slope] = votes.get(slope, 0) + 1
    if hint is not None:
        votes[hint.value] = votes.get(hint.value, 0) + (1 if hint.uniform else 0)
    return sorted(votes, key=lambda s: (-votes[s], s))


def _consistent(probe: _Probe, stride: int, padding: int, size: int) -> bool:
    """Every probed unit whose predicted field lies inside the reach shows exactly that.

    Units whose predicted field crosses a border are not read: zero padding clips
    their supports, reflect and replicate padding fold them, circular padding wraps
    them, and a unit that sees only padding may show pixels far from its field.
    """
    for i, support in zip(probe.units, probe.supports, strict=True):
        start = i * stride - padding
        end = start + size - 1
        if probe.near <= start and end <= probe.far and (support.lo, support.hi) != (start, end):
            return False
    return True


def _fit(probe: _Probe, stride: _Stride | None) -> AxisGeometry | None:
    """Size and padding from a probe holding at least one unclipped unit, else None.

    A uniform geometry is anchored on an unclipped unit (nearest the run first) and kept
    only if every unit it places wholly inside the input shows exactly its field: a
    folded or wrapped border support never decides the geometry.
    """
    starts, ends = probe.exact_starts(), probe.exact_ends()
    interior = [i for i in starts if i in ends]
    if not interior:
        return None
    run = probe.run or probe.units
    centre = run[len(run) // 2]
    anchors = sorted(interior, key=lambda i: (i not in run, abs(i - centre), i))
    for s in _candidate_strides(probe, stride):
        for anchor in anchors:
            padding = anchor * s - starts[anchor]
            size = ends[anchor] - starts[anchor] + 1
            if _consistent(probe, s, padding, size):
                return AxisGeometry(size, s, padding, True, probe.n)
    s = stride.value if stride is not None else 1
    widest = max(interior, key=lambda i: ends[i] - starts[i])
    return AxisGeometry(
        ends[widest] - starts[widest] + 1, s, widest * s - starts[widest], False, probe.n
    )


def _growth_steps(n0: int, growth: int) -> list[int]:
    """Steps that keep the user's size modulo a large stride: 2^a and 3 * 2^a, largest first.

    Used while the total stride is unknown: a step that is a multiple of it keeps the
    geometry ('same' padding) and the alignment of branches of the size the user gave.
    """
    steps = set()
    power = 1
    while power <= max(growth, 1):
        steps.add(power)
        if 3 * power <= growth:
            steps.add(3 * power)
        power *= 2
    return sorted(steps, reverse=True)


def _next_size(
    probe: _Probe,
    n0: int,
    stride: _Stride | None,
    cap: int,
    fit: AxisGeometry | None = None,
) -> tuple[int, int | None]:
    """Next probe size along the axis, and the first unit expected to lie wholly inside.

    A uniform ``fit`` (found at a size of the wrong residue) places the field; otherwise
    the exactly known start and end nearest the run's middle do (not the end units',
    which padding may fold or wrap).
    """
    if stride is None:
        # Every support running from border to border: the field is larger than the
        # input, so skip a size (deep networks probed at their small nominal size).
        clipped = not probe.exact_starts() and not probe.exact_ends()
        target = min((4 if clipped else 2) * probe.n, cap)
        n, step = min(
            (n0 + math.ceil((target - n0) / step) * step, -step)
            for step in _growth_steps(n0, max((target - n0) // 4, 1))[:2]
        )
        step = -step
        while n <= probe.n:
            n += step
        return min(n, max(cap, probe.n + 1)), None
    s = stride.value
    target = 2 * probe.n
    centre = None
    starts, ends = probe.exact_starts(), probe.exact_ends()
    run = probe.run or probe.units
    middle = run[len(run) // 2]
    known: tuple[int, int] | None = None
    if fit is not None and fit.uniform and fit.size is not None and fit.padding is not None:
        known = fit.padding, fit.size
    elif starts and ends and stride.uniform:
        i = min(starts, key=lambda u: abs(u - middle))
        j = min(ends, key=lambda u: abs(u - middle))
        known = i * s - starts[i], ends[j] - j * s + i * s - starts[i] + 1
    if known is not None:
        padding, size = known
        first_inside = (padding + probe.gap) // s + 1
        target = first_inside * s - padding + size + probe.gap + 1
        centre = first_inside
    k = max(1, math.ceil((target - n0) / s))
    n = n0 + k * s
    while n <= probe.n:
        n += s
    if n > cap:
        n = n0 + ((cap - n0) // s) * s
        if n <= probe.n:
            n = cap
    return n, centre


def _runnable(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    axis: int,
    n0: int,
    n: int,
    stride: _Stride | None,
    cap: int,
) -> tuple[int, int]:
    """``n``, or the next candidate size after it that the model runs at, and its length.

    Candidates keep the user's size modulo the stride (when known and uniform) or
    modulo smaller and smaller steps: branches that line up only at some sizes (odd
    ones, say) reject the others.
    """
    if stride is not None and stride.uniform and (n - n0) % stride.value == 0:
        steps = [stride.value]
    else:
        steps = _growth_steps(n0, max(n - n0, 1))
    candidates = [n]
    for step in steps:
        candidates += [n + k * step for k in range(1, 4)]
    error: RFEstError | None = None
    for size in dict.fromkeys(c for c in candidates if c <= max(cap, n)):
        try:
            m = _output_len(provider, output_name, base, axis, size)
        except RFEstError as caught:
            error = caught
            continue
        if m >= 1:
            return size, m
    if error is not None:
        raise error
    raise EstimationError(
        f"output {output_name!r} is empty along axis {axis} at every probe size tried from "
        f"{n}; rfest cannot grow the probe input there"
    )


def _check_growth(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    axis: int,
    m0: int,
    fit: AxisGeometry,
) -> bool:
    """Whether a uniform field gains exactly one output unit per stride of input.

    An output that does not grow at all (adaptive pooling) raises; one that grows at
    another rate means the stride was misread (units that see only folded or wrapped
    padding can line up with a wrong stride), and the probe must grow.
    """
    if not fit.uniform or fit.stride is None:
        return True
    n0 = base[axis]
    m1 = _output_len_or_none(provider, output_name, base, axis, n0 + fit.stride)
    if m1 == m0 + 1:
        return True
    far = _output_len_or_none(provider, output_name, base, axis, n0 + 16 * fit.stride)
    if m1 is None and far is None:
        return True  # a model that takes no larger input: the fit at its size stands
    if m1 is None or far is None:
        return False
    if far == m0:
        raise SizeDependentGeometryError(
            f"output {output_name!r} has {m0} units along axis {axis} at input size {n0}, "
            f"{m1} at size {n0 + fit.stride} and {far} at size {n0 + 16 * fit.stride}: it "
            f"does not grow with the input (adaptive pooling, or a resize to a fixed size "
            f"such as Resizing({m0}, ...)), so where its units look depends on the input "
            f"size and no size, stride and padding describe it. Measure an output before "
            f"that layer"
        )
    return False


def _far_output_len(
    provider: GradientProvider, output_name: str, base: tuple[int, ...], axis: int, n: int
) -> int | None:
    """Output length at ``n`` or at one of the next sizes the model runs at (branches that
    line up only at some sizes); None if none of them runs."""
    for size in range(n, n + 8):
        try:
            return _output_len(provider, output_name, base, axis, size)
        except RFEstError:
            continue
    return None


def _output_len_or_none(
    provider: GradientProvider, output_name: str, base: tuple[int, ...], axis: int, n: int
) -> int | None:
    try:
        return _output_len(provider, output_name, base, axis, n)
    except RFEstError:
        return None


def _output_len(
    provider: GradientProvider, output_name: str, base: tuple[int, ...], axis: int, n: int
) -> int:
    return _output_shape(provider, _with(base, axis, n), output_name)[axis]


def _with(shape: tuple[int, ...], axis: int, value: int) -> tuple[int, ...]:
    return (*shape[:axis], value, *shape[axis + 1 :])


def _periodic_fit(
    provider: GradientProvider,
    output_name: str,
    base: tuple[int, ...],
    base_out: tuple[int, ...],
    axis: int,
    max_input_size: int,
) -> AxisGeometry | None:
    """Units that differ: their period and phases (`rfest._periodic`), if they repeat
    with a period of 2 or more (a period of 1 is left to the uniform measurement)."""
    prober = _AxisProber(provider, output_name, base, base_out, axis)
    found = measure_periodic(prober, base_out[axis], max_input_size)
    if found is None or found[0].period == 1:
        return None
    pattern, n = found
    size, stride, padding = summary(pattern)
    return AxisGeometry(size, stride, padding, False, n, pattern)


@dataclass(frozen=True)
class _AxisProber:
    """This module's probing along one axis, for `rfest._periodic` (an ``AxisProber``)."""

    provider: GradientProvider
    output_name: str
    base: tuple[int, ...]
    base_out: tuple[int, ...]
    axis: int

    @property
    def size(self) -> int:
        return self.base[self.axis]

    def output_len(self, n: int) -> int:
        return _output_len(self.provider, self.output_name, self.base, self.axis, n)

    def probe(self, n: int, units: Sequence[int]) -> _Probe:
        """Supports of ``units`` and of the end units, which may see only padding (as in
        :func:`_probe`: they are left out and flagged, not an error): so may their
        neighbours, a padding wider than the field (a run of dead units at either end);
        a dead unit between live ones is an error."""
        m = self.output_len(n)
        along = tuple(sorted({*units, 0, 1, m - 2, m - 1} & set(range(m))))
        spatial = _with(self.base, self.axis, n)
        middle = tuple(size // 2 for size in self.base_out)
        probed = [_with(middle, self.axis, i) for i in along]
        maps = _gradient_maps(self.provider, self.output_name, spatial, probed)
        supports = axis_supports(maps, self.axis)
        live = [(i, sup) for i, sup in zip(along, supports, strict=True) if sup is not None]
        alive = [k for k, sup in enumerate(supports) if sup is not None]
        if not live or any(sup is None for sup in supports[alive[0] : alive[-1] + 1]):
            _axis_supports(maps, self.output_name, spatial, probed, self.axis)  # raises
        dead = (supports[0] is None, supports[-1] is None)
        return _Probe(n, m, tuple(i for i, _ in live), tuple(sup for _, sup in live), (), dead)

    def supports(self, n: int, units: Sequence[int]) -> list[Interval]:
        middle = tuple(size // 2 for size in self.base_out)
        return _gradient_supports(
            self.provider,
            self.output_name,
            _with(self.base, self.axis, n),
            [_with(middle, self.axis, i) for i in units],
            self.axis,
        )
