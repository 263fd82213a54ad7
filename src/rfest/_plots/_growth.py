"""How the receptive field grows through a network: size and stride per layer, readable
for 150-layer nets.

Rules this module keeps (those of :mod:`rfest._plots._fields` too): matplotlib is
imported only to draw; figures are made without pyplot.

- Only leaves by default: a container's output is that of its last child, so drawing both
  puts the same point twice, out of order.
- Layers in the order the forward pass produces them (``LayerRecord.step``), so the
  curve climbs instead of zig-zagging between containers and children.
- Stages marked: runs of layers in the same top-level module (``layer1``, ``layer2``...)
  are shaded and named; a flat model is split where the stride changes instead.
- At most ``max_labels`` layer names on the x axis, evenly spread, each kept short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rfest._plots._fields import _axis_value, _figure_and_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rfest._report import LayerRecord, LayerReport

__all__ = ["growth_order", "plot_rf_growth", "stages"]

_LABEL_CHARS = 28


def growth_order(
    report: LayerReport | Sequence[LayerRecord], *, leaves_only: bool = True
) -> list[LayerRecord]:
    """The records `plot_rf_growth` draws, in the order it draws them.

    Leaves only (unless ``leaves_only=False``), sorted by ``step``; records without a step
    keep their report order, after those with one.

    Example:
        >>> from rfest._report import LayerRecord
        >>> records = [LayerRecord("block", step=2, leaf=False), LayerRecord("b", step=1),
        ...            LayerRecord("a", step=0)]
        >>> [r.name for r in growth_order(records)]
        ['a', 'b']
    """
    records = list(getattr(report, "records", report))
    shown = [r for r in records if r.leaf or not leaves_only] or records
    ranked = sorted(
        enumerate(shown),
        key=lambda pair: (pair[1].step is None, pair[1].step or 0, pair[0]),
    )
    return [record for _, record in ranked]


def stages(records: Sequence[LayerRecord]) -> list[tuple[str, int, int]]:
    """``(label, first, last)`` index runs of ``records`` that form the network's stages.

    A stage is a run of layers under the same top-level module (the name up to its first
    ``.``, a ``:k`` call suffix dropped). When that gives no run of two or more layers
    (a flat model), a stage is a run of layers with the same stride (``"stride 4"``).

    Example:
        >>> from rfest._report import LayerRecord
        >>> names = ["conv1", "layer1.0.conv1", "layer1.0.relu:2", "layer2.0.conv1"]
        >>> stages([LayerRecord(n) for n in names])
        [('conv1', 0, 0), ('layer1', 1, 2), ('layer2', 3, 3)]
    """
    by_module = _runs([_top_module(r.name) for r in records])
    if any(last > first for _, first, last in by_module):
        return by_module
    strides = [
        "-" if r.stride is None else "x".join("-" if s is None else str(s) for s in r.stride)
        for r in records
    ]
    return [(f"stride {key}", first, last) for key, first, last in _runs(strides)]


def plot_rf_growth(
    report: LayerReport | Sequence[LayerRecord],
    *,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    log: bool = False,
    leaves_only: bool = True,
    max_labels: int = 40,
) -> Figure:
    """Receptive-field size (solid) and stride (dashed) per axis, layer by layer.

    Layers are drawn in the order the forward pass produces them, leaves only (see
    `growth_order`); stages are shaded and named at the top (see `stages`). Global layers
    are marked at the top of the plot and layers without a measurable field (see their
    ``error``) keep their place on the x axis without a point. Each size line is
    labelled ``"size, axis k"`` (one line ``"size, every axis"`` when all axes agree at
    every layer) and its y-data are the records' sizes; at most
    ``max_labels`` layer names label the x axis.

    Args:
        report: a `rfest.report` result, or its records.
        log: logarithmic size axis.
        leaves_only: False draws containers too (PyTorch modules that hold others).
        max_labels: most layer names written under the x axis.

    Example:
        >>> from rfest._report import LayerRecord
        >>> records = [LayerRecord("pool", output_shape=(3,), size=(4,), stride=(2,),
        ...                        padding=(0,), offset=(1.5,), step=1),
        ...            LayerRecord("conv", output_shape=(6,), size=(3,), stride=(1,),
        ...                        padding=(0,), offset=(1.0,), step=0)]
        >>> line = plot_rf_growth(records).axes[0].lines[0]
        >>> line.get_label(), line.get_xdata().tolist(), line.get_ydata().tolist()
        ('size, axis 0', [0, 1], [3, 4])
    """
    records = growth_order(report, leaves_only=leaves_only)
    if not records:
        raise ValueError("the report has no layers to draw")
    if max_labels < 1:
        raise ValueError(f"max_labels={max_labels!r} must be a positive int")
    every = math.ceil(len(records) / max_labels)
    labelled = list(range(0, len(records), every))
    width = min(18.0, max(6.0, 0.22 * len(labelled) + 2.5))
    fig, axes = _figure_and_axes(ax, figsize, (width, 5.0))
    ndim = max((len(r.size) for r in records if r.size is not None), default=0)
    alike = ndim > 1 and all(
        r.size is None or (len(set(r.size)) == 1 and len(set(r.stride or ())) <= 1) for r in records
    )
    for axis in range(1 if alike else ndim):
        xs = [k for k, r in enumerate(records) if _axis_value(r.size, axis) is not None]
        sizes = [_axis_value(records[k].size, axis) for k in xs]
        strides = [_axis_value(records[k].stride, axis) for k in xs]
        marker = "o" if len(records) <= 60 else None
        which = "every axis" if alike else f"axis {axis}"
        (line,) = axes.plot(xs, sizes, marker=marker, markersize=3, label=f"size, {which}")
        axes.plot(xs, strides, linestyle="--", color=line.get_color(), label=f"stride, {which}")
    top = max([1, *(s for r in records if r.size for s in r.size if s is not None)])
    global_layers = [k for k, r in enumerate(records) if r.is_global]
    if global_layers:
        axes.plot(
            global_layers,
            [top] * len(global_layers),
            linestyle="none",
            marker="^",
            color="black",
            label="global",
        )
    _mark_stages(axes, stages(records))
    axes.set_xlim(-0.5, len(records) - 0.5)
    axes.set_xticks(labelled)
    axes.set_xticklabels(
        [_short(records[k].name) for k in labelled], rotation=90, fontsize="x-small"
    )
    axes.set_xlabel(
        "layer, in execution order" + (f" (every {every}th named)" if every > 1 else "")
    )
    axes.set_ylabel("input pixels")
    if log:
        axes.set_yscale("log")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="center left")
    axes.set_title("Receptive field growth")
    return fig


def _mark_stages(axes: Any, runs: list[tuple[str, int, int]]) -> None:
    """Shade every other stage of two or more layers, and name each one wide enough."""
    total = max((last for _, _, last in runs), default=0) + 1
    wide = [(label, first, last) for label, first, last in runs if last > first]
    for k, (label, first, last) in enumerate(wide):
        if k % 2 == 1:
            axes.axvspan(first - 0.5, last + 0.5, color="0.92", zorder=0, linewidth=0)
        if (last - first + 1) >= total / 40:
            axes.text(
                (first + last) / 2,
                0.98,
                label,
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize="small",
                color="0.3",
                gid="stage",
            )


def _runs(keys: Sequence[str]) -> list[tuple[str, int, int]]:
    runs: list[tuple[str, int, int]] = []
    for k, key in enumerate(keys):
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1], k)
        else:
            runs.append((key, k, k))
    return runs


def _top_module(name: str) -> str:
    layer, separator, call = name.rpartition(":")
    base = layer if separator and call.isdigit() else name
    return base.split(".", 1)[0]


def _short(name: str) -> str:
    if len(name) <= _LABEL_CHARS:
        return name
    keep = (_LABEL_CHARS - 1) // 2
    return f"{name[:keep]}…{name[-keep:]}"
