"""Seeing receptive fields: matplotlib figures of gradient maps, fields, grids and growth.

Rules this module keeps:

- matplotlib is imported inside the functions that draw, never at module top, so
  ``import rfest`` stays free of it.
- Figures are ``matplotlib.figure.Figure`` objects made without pyplot: nothing is shown,
  no global figure state is touched, and they render with any backend (Agg included).
  Pass ``ax=`` to draw into axes of your own (a pyplot figure, a subplot grid).
- Boxes and dots are the numbers of the `rfest.ReceptiveField` they draw
  (``box``, ``center``); gradient maps are normalised for display only.
- Image coordinates: pixel ``(row, col)`` is centred at ``x = col, y = row``, so the box
  of input indices ``start .. stop - 1`` runs from ``start - 0.5`` to ``stop - 0.5``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rfest._result import ReceptiveField
from rfest._units import resolve_unit

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


__all__ = [
    "GRID_COLORS",
    "plot_gradient_map",
    "plot_rf_grid",
    "plot_rf_grids",
]

GRID_COLORS: Mapping[str, str] = {
    "top-left": "tab:red",
    "centre": "tab:blue",
    "bottom-right": "tab:green",
}
"""Colour of the box of each unit `plot_rf_grid` draws (as the receptivefield package)."""

_DOT_COLOR = "yellowgreen"
_PADDING_COLOR = "0.85"


def plot_gradient_map(
    gradient: np.ndarray,
    *,
    rf: ReceptiveField | None = None,
    unit: int | Sequence[int] | None = None,
    image: np.ndarray | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Draw a gradient map (from `gradient_map`), optionally over an image, with the
    box of ``unit``'s field from ``rf``.

    1-D maps are drawn as a curve with the field as a shaded span; 2-D maps as an image.
    The map is divided by its maximum for display only (an all-zero map stays zero).

    Args:
        gradient: the map, of the input's spatial shape.
        rf: the field of the output the map comes from; its box for ``unit`` is drawn
            (a rectangle labelled ``"field of unit (i, j)"``).
        unit: the unit the map belongs to; None is the centre unit, as in
            `gradient_map`. Needs ``rf``.
        image: an RGB or grey image of the input's spatial shape drawn under the map.
        ax: axes to draw into; None makes a new figure.

    Example:
        >>> rf = ReceptiveField((3, 3), (1, 1), (0, 0), (1.0, 1.0), (5, 5), (3, 3))
        >>> grad = np.zeros((5, 5)); grad[1:4, 2:5] = 1.0
        >>> fig = plot_gradient_map(grad, rf=rf, unit=(1, 2))
        >>> box = fig.axes[0].patches[0]
        >>> box.get_xy(), box.get_width(), box.get_height()
        ((1.5, 0.5), 3, 3)
    """
    grad = np.asarray(gradient, dtype=np.float64)
    if grad.ndim not in (1, 2):
        raise ValueError(
            f"a gradient map of {grad.ndim} spatial axes cannot be drawn; plot a 1-D or 2-D "
            f"slice of it (e.g. gradient[k])"
        )
    if rf is not None and tuple(rf.input_shape) != grad.shape:
        raise ValueError(
            f"the gradient map has shape {grad.shape} but the field describes an input of "
            f"{rf.input_shape}; compute both with the same input_shape"
        )
    peak = float(np.abs(grad).max()) if grad.size else 0.0
    display = np.abs(grad) / peak if peak > 0 else np.zeros_like(grad)
    fig, axes = _figure_and_axes(ax, figsize, (6.0, 5.0) if grad.ndim == 2 else (7.0, 3.0))
    index = None if rf is None else resolve_unit(unit, tuple(rf.output_shape))
    if grad.ndim == 1:
        _draw_gradient_1d(axes, display, rf, index)
    else:
        _draw_gradient_2d(fig, axes, display, rf, index, image, cmap)
    where = "" if index is None else f" of unit {index}"
    axes.set_title(f"Gradient{where} (normalised)")
    return fig


def plot_rf_grid(
    rf: ReceptiveField,
    image: np.ndarray | None = None,
    *,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw the receptive-field grid of a 2-D output over an image.

    The fields of the top-left, centre and bottom-right units are drawn as boxes in the
    colours of `GRID_COLORS` (labelled ``"top-left (0, 0)"`` ...), and the centre of
    every unit's field as a dot. Boxes may reach past the image: that part is padding,
    drawn on a grey background.

    Args:
        rf: a 2-D, non-global result of `rfest.compute`.
        image: RGB or grey picture drawn in the input's pixel grid (stretched to
            ``rf.input_shape`` if its size differs); None draws the sample photograph
            (`rfest.sample_image`).
        ax: axes to draw into; None makes a new figure.

    Example:
        >>> rf = ReceptiveField((5, 5), (2, 2), (1, 1), (1.0, 1.0), (9, 9), (4, 4))
        >>> fig = plot_rf_grid(rf, np.zeros((9, 9, 3)))
        >>> for box in fig.axes[0].patches:
        ...     print(box.get_label(), box.get_xy())
        top-left (0, 0) (-1.5, -1.5)
        centre (2, 2) (2.5, 2.5)
        bottom-right (3, 3) (4.5, 4.5)
    """
    _check_2d(rf)
    if image is None:
        from rfest._image import sample_image

        image = sample_image(rf.input_shape)
    fig, axes = _figure_and_axes(ax, figsize, (6.0, 6.6))
    _draw_grid(axes, rf, np.asarray(image))
    axes.set_title(title if title is not None else _grid_title(rf))
    return fig


def plot_rf_grids(
    rfs: Mapping[str, ReceptiveField] | Sequence[ReceptiveField],
    image: np.ndarray | None = None,
    *,
    layout: tuple[int, int] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The grid of `plot_rf_grid` for several outputs, one subplot each.

    Args:
        rfs: results as `rfest.compute` returns them for ``output=[...]`` (a dict
            name -> field), or a sequence of fields.
        image: as for `plot_rf_grid`; one picture for every output.
        layout: ``(rows, columns)`` of subplots; None picks a near-square grid.

    Example:
        >>> rf = ReceptiveField((3, 3), (1, 1), (0, 0), (1.0, 1.0), (8, 8), (6, 6), output="a")
        >>> fig = plot_rf_grids({"a": rf, "b": rf}, np.zeros((8, 8)))
        >>> [ax.get_title().split(":")[0] for ax in fig.axes]
        ['a', 'b']
    """
    items = list(rfs.items()) if isinstance(rfs, Mapping) else [(r.output, r) for r in rfs]
    if not items:
        raise ValueError("no receptive fields to draw")
    rows, cols = layout if layout is not None else _near_square(len(items))
    if rows * cols < len(items):
        raise ValueError(f"layout {rows}x{cols} has fewer than {len(items)} subplots")
    for _, rf in items:
        _check_2d(rf)
    if image is None:
        from rfest._image import sample_image

        image = sample_image(items[0][1].input_shape)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize or (5.0 * cols, 5.6 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    for k, axes in enumerate(grid.flat):
        if k >= len(items):
            axes.set_axis_off()
            continue
        name, rf = items[k]
        _draw_grid(axes, rf, np.asarray(image))
        label = name if name is not None else f"output {k}"
        axes.set_title(f"{label}: {_grid_title(rf, short=True)}")
    return fig


def _draw_gradient_1d(
    axes: Axes, display: np.ndarray, rf: ReceptiveField | None, index: tuple[int, ...] | None
) -> None:
    axes.plot(np.arange(display.size), display, drawstyle="steps-mid", color="tab:blue")
    if rf is not None and index is not None:
        ((start, stop),) = rf.box(index)
        axes.axvspan(
            start - 0.5, stop - 0.5, color="tab:orange", alpha=0.3, label=f"field of unit {index}"
        )
        axes.legend(fontsize="small")
    axes.set_xlabel("input index")
    axes.set_ylabel("|gradient| / max")


def _draw_gradient_2d(
    fig: Figure,
    axes: Axes,
    display: np.ndarray,
    rf: ReceptiveField | None,
    index: tuple[int, ...] | None,
    image: np.ndarray | None,
    cmap: str,
) -> None:
    extent = _extent(display.shape)
    if image is not None:
        axes.imshow(_as_rgb(image), extent=extent, interpolation="nearest")
        shown = np.ma.masked_equal(display, 0.0)
        mappable = axes.imshow(
            shown, extent=extent, cmap=cmap, alpha=0.6, vmin=0, vmax=1, interpolation="nearest"
        )
    else:
        mappable = axes.imshow(display, extent=extent, cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.04)
    if rf is not None and index is not None:
        _add_box(axes, rf, index, "white", f"field of unit {index}", linewidth=2.0)
        axes.legend(loc="upper right", fontsize="small")
    _frame(axes, rf, display.shape)


def _draw_grid(axes: Axes, rf: ReceptiveField, image: np.ndarray) -> None:
    axes.set_facecolor(_PADDING_COLOR)
    axes.imshow(_as_rgb(image), extent=_extent(rf.input_shape), interpolation="nearest")
    m0, m1 = rf.output_shape
    rows, cols = np.meshgrid(np.arange(m0), np.arange(m1), indexing="ij")
    centres = np.array(
        [rf.center((int(i), int(j))) for i, j in zip(rows.flat, cols.flat, strict=True)]
    )
    dot = float(np.clip(4000.0 / len(centres), 1.0, 12.0))
    axes.scatter(centres[:, 1], centres[:, 0], s=dot, color=_DOT_COLOR, label="centres", zorder=3)
    units = {
        "top-left": (0, 0),
        "centre": (m0 // 2, m1 // 2),
        "bottom-right": (m0 - 1, m1 - 1),
    }
    for role, unit in units.items():
        color = GRID_COLORS[role]
        _add_box(axes, rf, unit, color, f"{role} {unit}", linewidth=2.5)
        row, col = rf.center(unit)
        axes.scatter([col], [row], s=60, color=color, zorder=4)
    axes.legend(loc="upper right", fontsize="small", framealpha=0.8)
    _frame(axes, rf, tuple(rf.input_shape))


def _add_box(
    axes: Axes,
    rf: ReceptiveField,
    unit: tuple[int, ...],
    color: str,
    label: str,
    *,
    linewidth: float,
) -> None:
    from matplotlib.patches import Rectangle

    (r0, r1), (c0, c1) = rf.box(unit)
    axes.add_patch(
        Rectangle(
            (c0 - 0.5, r0 - 0.5),
            c1 - c0,
            r1 - r0,
            fill=False,
            edgecolor=color,
            linewidth=linewidth,
            label=label,
            zorder=5,
        )
    )


def _frame(axes: Axes, rf: ReceptiveField | None, shape: tuple[int, ...]) -> None:
    """Limits that hold the input and every drawn box; y grows downwards like an image."""
    x0, x1, y0, y1 = -0.5, shape[1] - 0.5, -0.5, shape[0] - 0.5
    for patch in axes.patches:
        bx, by = patch.get_xy()  # type: ignore[attr-defined]
        x0, y0 = min(x0, bx), min(y0, by)
        x1 = max(x1, bx + patch.get_width())  # type: ignore[attr-defined]
        y1 = max(y1, by + patch.get_height())  # type: ignore[attr-defined]
    axes.set_xlim(x0 - 0.5, x1 + 0.5)
    axes.set_ylim(y1 + 0.5, y0 - 0.5)
    axes.set_aspect("equal")
    axes.set_xlabel("input axis 1 (column)")
    axes.set_ylabel("input axis 0 (row)")


def _grid_title(rf: ReceptiveField, *, short: bool = False) -> str:
    flag = " (non-uniform: largest size)" if not rf.uniform else ""
    text = f"size {_pair(rf.size)}, stride {_pair(rf.stride)}, padding {_pair(rf.padding)}"
    if short:
        return text + flag
    name = f"{rf.output}: " if rf.output else ""
    return f"{name}{text}{flag}"


def _pair(values: tuple[Any, ...] | None) -> str:
    return "x".join(str(v) for v in values) if values is not None else "-"


def _check_2d(rf: ReceptiveField) -> None:
    if rf.is_global or rf.size is None or any(s is None for s in rf.size):
        raise ValueError(
            f"output {rf.output!r} has a global field: every unit sees the whole input, "
            f"so there is no grid to draw"
        )
    if rf.ndim != 2 or len(rf.output_shape) != 2:
        raise ValueError(
            f"the RF grid is drawn for 2-D inputs and outputs; this field has input "
            f"{rf.input_shape} and output {rf.output_shape}"
        )


def _axis_value(values: tuple[Any, ...] | None, axis: int) -> Any:
    if values is None or axis >= len(values):
        return None
    return values[axis]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A picture imshow draws the same way whatever its dtype: floats in 0..1, or uint8."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            f"expected an image (height, width), (height, width, 1), (height, width, 3) or "
            f"(height, width, 4); got shape {image.shape}"
        )
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _extent(shape: Sequence[int]) -> tuple[float, float, float, float]:
    return (-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5)


def _near_square(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _figure_and_axes(
    ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]
) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize or default, layout="constrained")
    return fig, fig.add_subplot()
