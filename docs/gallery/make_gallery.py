"""Draw the documentation's figures: ``python docs/gallery/make_gallery.py``.

Needs rfest with the torch backend and matplotlib. Writes the PNGs beside this file; the
numbers in every figure come from rfest's results (the README network: size 34,
stride 4, padding 0 on 96 x 96).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import rfest
from rfest._gradient import gradient_map
from rfest._image import sample_image
from rfest._plots import (
    plot_gradient_map,
    plot_rf_grid,
    plot_rf_grids,
    plot_rf_growth,
)
from rfest._report import report
from rfest_torch.examples import receptivefield_readme_net

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # torch_models: a ResNet-50 in code
SHAPE = (3, 96, 96)


def save(fig: Figure, name: str) -> None:
    path = HERE / name
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def geometry() -> None:
    """Size, stride, padding and offset along one axis: conv k3, stride 2, padding 1."""
    rf = rfest.ReceptiveField((3,), (2,), (1,), (0.0,), (8,), (4,))
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.add_subplot()
    n = rf.input_shape[0]
    for k in range(-1, n + 1):
        padded = k < 0 or k >= n
        ax.add_patch(
            Rectangle((k - 0.5, 0), 1, 1, facecolor="0.9" if padded else "white", edgecolor="0.4")
        )
        ax.text(k, 0.5, "pad" if padded else str(k), ha="center", va="center", fontsize=9)
    colours = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for i, colour in zip(range(rf.output_shape[0]), colours, strict=True):
        ((start, stop),) = rf.box(i)
        y = 1.3 + 0.45 * i
        ax.add_patch(Rectangle((start - 0.5, y), stop - start, 0.3, color=colour, alpha=0.6))
        (centre,) = rf.center(i)
        ax.plot([centre], [y + 0.15], "k.")
        ax.text(stop - 0.3, y + 0.15, f"unit {i}: inputs {start}..{stop - 1}", va="center")
    ax.annotate(
        "offset = (size - 1) / 2 - padding = 0",
        xy=(0, 1.3),
        xytext=(2.5, -0.7),
        arrowprops={"arrowstyle": "->"},
    )
    ax.set_xlim(-2, n + 5)
    ax.set_ylim(-1, 3.4)
    ax.set_axis_off()
    ax.set_title("size 3, stride 2, padding 1: unit i sees i*2 - 1 ... i*2 + 1")
    save(fig, "geometry.png")


def resnet_growth() -> None:
    """The growth plot of a torchvision-layout ResNet-50 at 224 px: 158 leaves."""
    from torch_models import ResNet50

    layers = report(ResNet50().eval(), (3, 224, 224), dtype="float32")
    assert layers["layer4"].size == (427, 427)
    save(plot_rf_growth(layers), "rf_growth_resnet50.png")


def main() -> None:
    geometry()
    net = receptivefield_readme_net()
    fields = rfest.compute(net, SHAPE, output=["conv2", "pool2", "feature_grid"])
    image = sample_image(SHAPE[1:])
    save(plot_rf_grid(fields["feature_grid"], image), "rf_grid.png")
    save(plot_rf_grids(fields, image, layout=(1, 3)), "rf_grids.png")
    grad = gradient_map(net, SHAPE, unit=(4, 10), output="feature_grid")
    save(
        plot_gradient_map(grad, rf=fields["feature_grid"], unit=(4, 10), image=image),
        "gradient_map.png",
    )
    save(plot_gradient_map(grad, rf=fields["feature_grid"], unit=(4, 10)), "gradient_only.png")
    layers = report(net, SHAPE, dtype="float32")
    save(plot_rf_growth(layers), "rf_growth.png")
    resnet_growth()
    (HERE / "report.txt").write_text(layers.to_text() + "\n")
    print(f"wrote {HERE / 'report.txt'}")
    assert np.isfinite(grad).all()


if __name__ == "__main__":
    main()
