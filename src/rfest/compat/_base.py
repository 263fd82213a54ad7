"""What ``receptivefield.base.ReceptiveField`` did, done by rfest: results and plots.

Subclasses measure (``_measure``) and give gradient maps (``_gradient``) with rfest; this
class turns rfest's fields into the old description objects and draws with
`rfest._plots`. Plots go to pyplot figures, as they did, so ``plt.show()`` and
``plt.savefig()`` in existing code keep working; each method also returns its figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rfest._errors import EstimationError
from rfest._options import ProbeOptions
from rfest._plots import plot_gradient_map, plot_rf_grid
from rfest._result import ReceptiveField
from rfest._session import Session
from rfest.compat.types import (
    FeatureMapDescription,
    GridPoint,
    GridShape,
    ImageShape,
    ReceptiveFieldDescription,
    Size,
)

__all__ = ["CompatReceptiveField", "describe", "open_session"]

_PROBE_OPTIONS = ("dtype", "linearize", "max_input_size")


def open_session(
    model: Any, sample: Sequence[int], backend: str, options: dict[str, Any]
) -> Session:
    """One session for ``model``: its fields and every gradient map then share providers.
    ``options`` are those of `rfest.compute`, checked at the same front door."""
    probe = {k: v for k, v in options.items() if k in _PROBE_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in _PROBE_OPTIONS}
    return Session(
        model,
        tuple(sample),
        backend=backend,
        options=ProbeOptions.check(**probe),
        backend_options=rest,
    )


def describe(rf: ReceptiveField) -> ReceptiveFieldDescription:
    """The old description of a 2-D rfest field: ``(x, y)`` = (columns, rows), and the
    offset with pixel centres at half-integers (rfest's ``offset + 0.5``).

    Example:
        >>> rf = ReceptiveField((34, 30), (4, 2), (0, 1), (16.5, 13.5), (96, 96), (16, 33))
        >>> describe(rf)
        ReceptiveFieldDescription(offset=(14.0, 17.0), stride=(2.0, 4.0), size=Size(w=30, h=34))
    """
    if rf.is_global or rf.size is None or rf.stride is None or rf.offset is None:
        raise EstimationError(
            f"feature map {rf.output!r} has a global receptive field: every unit sees the "
            f"whole input, which a ReceptiveFieldDescription cannot express. Use "
            f"rfest.compute(...) directly (is_global=True), or pick an earlier feature map"
        )
    if len(rf.size) != 2 or any(v is None for v in (*rf.size, *rf.stride, *rf.offset)):
        raise EstimationError(
            f"feature map {rf.output!r}: rfest.compat describes 2-D fields local along both "
            f"axes; got size {rf.size}. Use rfest.compute(...) directly"
        )
    (h, w), (sh, sw), (oh, ow) = rf.size, rf.stride, rf.offset
    return ReceptiveFieldDescription(
        offset=(float(ow) + 0.5, float(oh) + 0.5),  # type: ignore[arg-type]
        stride=(float(sw), float(sh)),  # type: ignore[arg-type]
        size=Size(w=int(w), h=int(h)),  # type: ignore[arg-type]
    )


class CompatReceptiveField:
    """Base of `rfest.compat.pytorch.PytorchReceptiveField` and
    `rfest.compat.keras.KerasReceptiveField`."""

    def __init__(self, model_func: Callable[..., Any]) -> None:
        self._model_func = model_func
        self._input_shape: GridShape | None = None
        self._output_shapes: list[GridShape] = []
        self._fields: list[ReceptiveField] = []
        self._rf_params: list[ReceptiveFieldDescription] = []
        self._built = False

    # -- results -------------------------------------------------------------------------

    @property
    def feature_maps_desc(self) -> list[FeatureMapDescription]:
        """Description of every feature map."""
        self._check()
        return [
            FeatureMapDescription(size=Size(s.w, s.h), rf=rf)
            for s, rf in zip(self._output_shapes, self._rf_params, strict=True)
        ]

    @property
    def input_shape(self) -> ImageShape:
        """Width, height and channels of the input."""
        self._check()
        assert self._input_shape is not None
        return ImageShape(w=self._input_shape.w, h=self._input_shape.h, c=self._input_shape.c)

    @property
    def output_shapes(self) -> list[Size]:
        """Width and height of every feature map."""
        self._check()
        return [Size(w=s.w, h=s.h) for s in self._output_shapes]

    @property
    def num_feature_maps(self) -> int:
        """How many feature maps were measured."""
        self._check()
        return len(self._output_shapes)

    @property
    def fields(self) -> list[ReceptiveField]:
        """rfest's own results, one per feature map (input-axis order, exact offsets)."""
        self._check()
        return list(self._fields)

    def _store(
        self, fields: Sequence[ReceptiveField], input_shape: GridShape, outputs: list[GridShape]
    ) -> list[FeatureMapDescription]:
        self._rf_params = [describe(rf) for rf in fields]
        self._fields = list(fields)
        self._input_shape = input_shape
        self._output_shapes = outputs
        self._built = True
        return self.feature_maps_desc

    def _gradient(self, fm_id: int, unit: tuple[int, int]) -> np.ndarray:
        """Gradient map (rows, columns) of ``unit`` (rfest order) of feature map ``fm_id``."""
        raise NotImplementedError

    # -- plots ---------------------------------------------------------------------------

    def plot_gradient_at(
        self, fm_id: int, point: Sequence[int], image: np.ndarray | None = None, **plot_params: Any
    ) -> Any:
        """Gradient map of the unit at ``point = (x, y)`` of feature map ``fm_id``, with its
        field's box. ``plot_params``: ``figsize``, ``axis`` (matplotlib axes to draw into)."""
        self._check()
        unit = self._unit(fm_id, point)
        axis = self._axis(plot_params.get("axis"), plot_params.get("figsize", (5, 5)))
        return plot_gradient_map(
            self._gradient(fm_id, unit), rf=self._fields[fm_id], unit=unit, image=image, ax=axis
        )

    def plot_gradients_at(
        self,
        points: Sequence[Sequence[int]],
        image: np.ndarray | None = None,
        layout: tuple[int, int] | None = None,
        figsize: tuple[float, float] | None = None,
    ) -> Any:
        """`plot_gradient_at` for every feature map, ``points[k]`` on map ``k``."""
        self._check()
        fig, axes = self._subplots(layout, figsize)
        for fm, (point, axis) in enumerate(zip(points, axes, strict=False)):
            self.plot_gradient_at(fm, point, image, axis=axis)
        return fig

    def plot_rf_grid(
        self,
        fm_id: int,
        custom_image: np.ndarray | None = None,
        plot_naive_rf: bool = False,
        **plot_params: Any,
    ) -> Any:
        """The field grid of feature map ``fm_id`` (top-left, centre and bottom-right boxes
        in red, blue, green; centres as dots). ``plot_naive_rf`` adds the grid of equal
        cells, input size / feature-map size. ``plot_params``: ``figsize``, ``axis``."""
        self._check()
        axis = self._axis(plot_params.get("axis"), plot_params.get("figsize", (10, 10)))
        rf = self._fields[fm_id]
        fig = plot_rf_grid(rf, custom_image, ax=axis)
        if plot_naive_rf:
            _naive_grid(axis, rf)
        return fig

    def plot_rf_grids(
        self,
        custom_image: np.ndarray | None = None,
        plot_naive_rf: bool = False,
        layout: tuple[int, int] | None = None,
        figsize: tuple[float, float] | None = None,
    ) -> Any:
        """`plot_rf_grid` for every feature map; ``layout`` (rows, columns) defaults
        to one row per map."""
        self._check()
        fig, axes = self._subplots(layout, figsize)
        for fm, axis in zip(range(self.num_feature_maps), axes, strict=False):
            self.plot_rf_grid(fm, custom_image, plot_naive_rf, axis=axis)
        return fig

    # -- helpers -------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._built:
            raise RuntimeError("Receptive field not computed. Run compute function.")

    def _unit(self, fm_id: int, point: Sequence[int]) -> tuple[int, int]:
        x, y = GridPoint(*point)
        return int(y), int(x)

    def _axis(self, axis: Any, figsize: Any) -> Any:
        if axis is not None:
            return axis
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize).add_subplot()

    def _subplots(
        self, layout: tuple[int, int] | None, figsize: tuple[float, float] | None
    ) -> tuple[Any, list[Any]]:
        import matplotlib.pyplot as plt

        rows, cols = layout if layout is not None else (self.num_feature_maps, 1)
        fig = plt.figure(figsize=figsize)
        return fig, [fig.add_subplot(rows, cols, k + 1) for k in range(rows * cols)]


def _naive_grid(axis: Any, rf: ReceptiveField) -> None:
    from matplotlib.patches import Rectangle

    (n0, n1), (m0, m1) = rf.input_shape, rf.output_shape
    d0, d1 = n0 / m0, n1 / m1
    for i in range(m0):
        for j in range(m1):
            axis.add_patch(
                Rectangle(
                    (j * d1 - 0.5, i * d0 - 0.5),
                    d1,
                    d0,
                    fill=False,
                    edgecolor="gray",
                    linewidth=0.5,
                    label="_naive",
                )
            )
