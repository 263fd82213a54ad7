"""Plot of an effective receptive field; matplotlib is imported here only, never pyplot.

A view: it draws numbers it is handed and imports nothing of the analysis that made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_effective_field"]

Box = Sequence[tuple[int, int] | None]


def plot_effective_field(
    heatmap: np.ndarray,
    box: Box | None,
    marks: Sequence[tuple[float, float, tuple[int, int]]],
    title: str,
    ax: Any,
) -> Any:
    """Draw a 1-D or 2-D ``heatmap`` into ``ax`` (a new ``Figure`` when None); return the figure.

    2-D heatmaps are drawn as an image (axis 0 down, axis 1 across) with the theoretical
    field's ``box`` and, for each ``(fraction, level, interval)`` of ``marks``, the contour at
    ``level``; 1-D heatmaps as a curve with the box's span and each fraction's ``interval``.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("EffectiveField.plot needs matplotlib: pip install matplotlib") from exc

    if ax is None:
        figure = Figure(figsize=(5, 4.5))
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    colours = ("tab:orange", "tab:green", "tab:purple", "tab:brown")
    if heatmap.ndim == 1:
        ax.plot(np.arange(heatmap.size), heatmap, color="black", label="heatmap")
        if box is not None and box[0] is not None:
            ax.axvspan(
                box[0][0] - 0.5,
                box[0][1] - 0.5,
                color="tab:blue",
                alpha=0.15,
                label="theoretical RF",
            )
        for k, (f, _, (start, stop)) in enumerate(marks):
            ax.axvspan(
                start - 0.5,
                stop - 0.5,
                fill=False,
                hatch="//",
                edgecolor=colours[k % len(colours)],
                label=f"{f:.0%} of the mass",
            )
        ax.set_xlabel("input axis 0 (pixels)")
    else:
        image = ax.imshow(heatmap, cmap="viridis", origin="upper", interpolation="nearest")
        figure.colorbar(image, ax=ax, label="mean contribution")
        if box is not None and all(b is not None for b in box):
            (top, bottom), (left, right) = box  # type: ignore[misc]
            ax.add_patch(
                Rectangle(
                    (left - 0.5, top - 0.5),
                    right - left,
                    bottom - top,
                    fill=False,
                    edgecolor="tab:red",
                    linewidth=1.5,
                    label="theoretical RF",
                )
            )
        for k, (f, level, _) in enumerate(marks):
            if level > 0 and np.any(heatmap < level):
                ax.contour(
                    heatmap,
                    levels=[level],
                    colors=[colours[k % len(colours)]],
                    linewidths=1.2,
                )
            ax.plot([], [], color=colours[k % len(colours)], label=f"{f:.0%} of the mass")
        ax.set_xlabel("input axis 1 (pixels)")
        ax.set_ylabel("input axis 0 (pixels)")
        ax.set_xlim(-0.5, heatmap.shape[1] - 0.5)
        ax.set_ylim(heatmap.shape[0] - 0.5, -0.5)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return figure
