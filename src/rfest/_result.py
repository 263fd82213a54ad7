"""The result type: receptive-field geometry of one output, per spatial axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ReceptiveField"]


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
        return tuple(
            None if o is None or s is None else float(o + i * s)  # type: ignore[misc]
            for i, s, o in zip(index, self._local("stride"), self._local("offset"), strict=True)
        )

    def box(self, index: int | Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Input region ``(start, stop)`` per axis (``stop`` exclusive) seen by unit ``index``.

        ``start`` may be negative and ``stop`` may pass the input size: that part is padding.

        Example:
            >>> ReceptiveField((5, 5), (2, 2), (2, 2), (0.0, 0.0), (8, 8), (4, 4)).box((0, 1))
            ((-2, 3), (0, 5))
        """
        index = self._index(index)
        boxes = []
        for i, size, stride, padding in zip(
            index, self._local("size"), self._local("stride"), self._local("padding"), strict=True
        ):
            if size is None or stride is None or padding is None:
                raise ValueError("this output is global along an axis: it has no box there")
            start = i * stride - padding
            boxes.append((start, start + size))
        return tuple(boxes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form (tuples become lists).

        Example:
            >>> ReceptiveField((3,), (1,), (1,), (0.0,), (8,), (8,)).to_dict()["size"]
            [3]
        """
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        } | {"grown": self.grown}

    def __str__(self) -> str:
        name = f" of {self.output!r}" if self.output else ""
        if self.is_global:
            return f"ReceptiveField{name}: global (every unit sees the whole input)"
        flag = "" if self.uniform else " [non-uniform: largest size shown]"
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
