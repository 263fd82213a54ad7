"""The result type: receptive-field geometry of one output, per spatial axis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, TypeVar

__all__ = ["Phase", "PhasePattern", "ReceptiveField"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Phase:
    """The field of one phase: unit ``k*period + r`` sees ``k*step + start ... + size - 1``."""

    size: int
    start: int


@dataclass(frozen=True)
class PhasePattern:
    """Fields along one axis that repeat every ``period`` units, ``step`` input pixels on.

    Output unit ``u = k*period + r`` (``0 <= r < period``) sees input indices
    ``k*step + phases[r].start ... k*step + phases[r].start + phases[r].size - 1``.
    A uniform axis is the pattern of period 1: ``step`` = stride, start = -padding.

    Example:
        >>> up = PhasePattern(2, 1, (Phase(2, -1), Phase(2, 0)))  # bilinear x2 upsampling
        >>> [up.box(u) for u in range(4)]
        [(-1, 1), (0, 2), (0, 2), (1, 3)]
    """

    period: int
    step: int
    phases: tuple[Phase, ...]

    @property
    def stride(self) -> Fraction:
        """Mean input distance between neighbouring units, ``step / period``."""
        return Fraction(self.step, self.period)

    def box(self, unit: int) -> tuple[int, int]:
        """``(start, stop)`` (stop exclusive) of unit ``unit``; may reach into padding."""
        k, r = divmod(unit, self.period)
        phase = self.phases[r]
        start = k * self.step + phase.start
        return start, start + phase.size


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the units of one output, per spatial axis, in input-axis order.

    Output unit ``i`` (along one axis) sees input indices
    ``i*stride - padding ... i*stride - padding + size - 1``; indices below 0 or past the
    end of the input fall in padding. ``offset`` is the centre of unit 0's field,
    ``(size - 1) / 2 - padding``.

    When ``is_global`` is True every output unit depends on the whole input and
    ``size``, ``stride``, ``padding`` and ``offset`` are None. An output that is global
    along some axes only keeps None in those axes' entries.

    After upsampling or transposed convolutions (``uniform`` False) units differ, but
    along each axis their fields repeat: every ``period`` units they move ``period_step``
    input pixels, and each of the ``period`` phases has its own size and start
    (``phases``, ``pattern``; ``stride_fraction`` = step / period, e.g. 1/2 after a final
    2x upsampling). ``box`` and ``center`` are exact for every unit, uniform or not.
    ``size`` is then the largest phase's, ``stride`` the mean stride rounded (at least
    1), and ``padding``/``offset`` those of unit 0. A uniform axis is the pattern of
    period 1, so these properties read the same for every output; they are None on an
    axis whose units differ without repeating (mixed-stride branches), where ``box`` is
    then only the largest field placed by the mean stride. ``clipped`` says which units'
    fields run past the input: such a unit, near a border, sees only part of its box
    (the rest is padding).

    Example:
        >>> rf = ReceptiveField(size=(3,), stride=(1,), padding=(1,), offset=(0.0,),
        ...                     input_shape=(8,), output_shape=(8,))
        >>> rf.box(2)
        ((1, 4),)
        >>> rf.center(2)
        (2.0,)
    """

    size: tuple[int | None, ...] | None
    stride: tuple[int | None, ...] | None
    padding: tuple[int | None, ...] | None
    offset: tuple[float | None, ...] | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    is_global: bool = False
    uniform: bool = True
    probe_shape: tuple[int, ...] | None = None
    output: str | None = None
    inferred_input_shape: tuple[int | None, ...] | None = None
    """The whole ``input_shape`` (framework layout) rfest read from the model when none was
    given, e.g. ``(3, None, None)`` from a first ``Conv2d(3, ...)``; None when it was given."""
    pattern: tuple[PhasePattern | None, ...] | None = None
    """Non-uniform results: per axis, the measured pattern (period 1 on a uniform axis;
    None where the axis is global or its units differ without repeating)."""

    @property
    def ndim(self) -> int:
        """Number of spatial axes of the input."""
        return len(self.input_shape)

    @property
    def grown(self) -> bool:
        """True when rfest probed an input larger than ``input_shape`` to fit the field."""
        return self.probe_shape is not None and tuple(self.probe_shape) != tuple(self.input_shape)

    def center(self, index: int | Sequence[int]) -> tuple[float, ...]:
        """Input coordinates of the centre of the field of output unit ``index``.

        Example:
            >>> ReceptiveField((5, 5), (2, 2), (2, 2), (0.0, 0.0), (8, 8), (4, 4)).center((1, 3))
            (2.0, 6.0)
        """
        index = self._index(index)
        centres: list[Any] = []
        for axis, (i, s, o) in enumerate(
            zip(index, self._local("stride"), self._local("offset"), strict=True)
        ):
            pattern = self._pattern(axis)
            if pattern is not None:
                start, stop = pattern.box(i)
                centres.append((start + stop - 1) / 2)
            else:
                centres.append(None if o is None or s is None else float(o + i * s))
        return tuple(centres)

    def box(self, index: int | Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Input region ``(start, stop)`` per axis (``stop`` exclusive) seen by unit ``index``.

        ``start`` may be negative and ``stop`` may pass the input size: that part is padding.

        Example:
            >>> ReceptiveField((5, 5), (2, 2), (2, 2), (0.0, 0.0), (8, 8), (4, 4)).box((0, 1))
            ((-2, 3), (0, 5))
        """
        index = self._index(index)
        boxes = []
        for axis, (i, size, stride, padding) in enumerate(
            zip(
                index,
                self._local("size"),
                self._local("stride"),
                self._local("padding"),
                strict=True,
            )
        ):
            if size is None or stride is None or padding is None:
                raise ValueError("this output is global along an axis: it has no box there")
            pattern = self._pattern(axis)
            if pattern is not None:
                boxes.append(pattern.box(i))
                continue
            start = i * stride - padding
            boxes.append((start, start + size))
        return tuple(boxes)

    def clipped(self, index: int | Sequence[int]) -> tuple[bool, ...]:
        """Per axis, True where unit ``index``'s field runs past the input's ends.

        Such a unit (near a border) sees only the part of ``box(index)`` inside the input;
        the rest is padding. The phases describe every unit; these are the ones whose
        support at ``input_shape`` is cut by the border.

        Example:
            >>> ReceptiveField((5, 5), (2, 2), (2, 2), (0.0, 0.0), (8, 8), (4, 4)).clipped((0, 1))
            (True, False)
        """
        return tuple(
            start < 0 or stop > n
            for (start, stop), n in zip(self.box(index), self.input_shape, strict=True)
        )

    @property
    def period(self) -> tuple[int | None, ...] | None:
        """Per axis, the units after which fields repeat (1 on a uniform axis).

        Example:
            >>> ReceptiveField((3,), (1,), (1,), (0.0,), (8,), (8,)).period
            (1,)
        """
        return self._per_axis(lambda p: p.period)

    @property
    def period_step(self) -> tuple[int | None, ...] | None:
        """Per axis, the input pixels fields move per period (the stride on a uniform axis)."""
        return self._per_axis(lambda p: p.step)

    @property
    def stride_fraction(self) -> tuple[Fraction | None, ...] | None:
        """Per axis, the exact mean stride ``period_step / period`` (1/2 after 2x upsampling)."""
        return self._per_axis(lambda p: p.stride)

    @property
    def phases(self) -> tuple[tuple[Phase, ...] | None, ...] | None:
        """Per axis, the field of each phase (one phase, start -padding, on a uniform axis)."""
        return self._per_axis(lambda p: p.phases)

    def patterns(self) -> tuple[PhasePattern | None, ...] | None:
        """Per axis, the phase pattern (period 1 on a uniform axis; None where global).

        Example:
            >>> ReceptiveField((3,), (2,), (1,), (0.0,), (8,), (4,)).patterns()
            (PhasePattern(period=1, step=2, phases=(Phase(size=3, start=-1),)),)
        """
        if self.is_global or self.size is None or self.stride is None or self.padding is None:
            return None
        if self.pattern is not None or not self.uniform:
            return self.pattern or (None,) * self.ndim
        result: list[PhasePattern | None] = []
        for axis, (size, stride, padding) in enumerate(
            zip(self.size, self.stride, self.padding, strict=True)
        ):
            pattern = self._pattern(axis)
            if pattern is None and size is not None and stride is not None and padding is not None:
                pattern = PhasePattern(1, stride, (Phase(size, -padding),))
            result.append(pattern)
        return tuple(result)

    def _per_axis(self, read: Callable[[PhasePattern], _T]) -> tuple[_T | None, ...] | None:
        patterns = self.patterns()
        if patterns is None:
            return None
        return tuple(None if p is None else read(p) for p in patterns)

    def _pattern(self, axis: int) -> PhasePattern | None:
        if self.pattern is None:
            return None
        return self.pattern[axis]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form (tuples become lists).

        Example:
            >>> ReceptiveField((3,), (1,), (1,), (0.0,), (8,), (8,)).to_dict()["size"]
            [3]
        """
        plain = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
            if key != "pattern"
        }
        fractions = self.stride_fraction
        phases = self.phases
        return plain | {
            "grown": self.grown,
            "period": None if self.period is None else list(self.period),
            "period_step": None if self.period_step is None else list(self.period_step),
            "stride_fraction": None
            if fractions is None
            else [None if f is None else str(f) for f in fractions],
            "phases": None
            if phases is None
            else [
                None if axis is None else [{"size": p.size, "start": p.start} for p in axis]
                for axis in phases
            ],
        }

    def __str__(self) -> str:
        name = f" of {self.output!r}" if self.output else ""
        if self.is_global:
            return f"ReceptiveField{name}: global (every unit sees the whole input)"
        flag = ""
        if not self.uniform:
            flag = (
                f" [non-uniform: largest size shown; fields repeat every {self.period} units, "
                f"{self.period_step} input pixels on; box(unit) is exact]"
                if self.pattern is not None
                else " [non-uniform: largest size shown]"
            )
        return (
            f"ReceptiveField{name}: size {self.size}, stride {self.stride}, "
            f"padding {self.padding}, offset {self.offset}{flag}"
        )

    def _local(self, field: str) -> tuple[Any, ...]:
        value = getattr(self, field)
        if value is None:
            raise ValueError("this output is global: every unit sees the whole input")
        return tuple(value)

    def _index(self, index: int | Sequence[int]) -> tuple[int, ...]:
        index = (index,) if isinstance(index, int) else tuple(index)
        if len(index) != self.ndim:
            raise ValueError(
                f"index {index} has {len(index)} axes; this field has {self.ndim} spatial axes"
            )
        return index
