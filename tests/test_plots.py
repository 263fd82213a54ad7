"""Plots show the numbers of the result: boxes, dots and lines are read back from the artists.

Geometry of the ``receptivefield`` README network (valid convs 5, 3, pool 2, conv 3, 3,
pool 2, conv 3, 3), per axis: r 5, 7, 8 (j2), 12, 16, 18 (j4), 26, 34; padding 0.
Unit ``i`` of ``feature_grid`` sees input ``4i .. 4i + 33``; on 96 px it has
(96 - 4) // 1 ... -> 92, 90, 45, 43, 41, 20, 18, 16 units. Image coordinates: pixel k is
centred at k, so a box over pixels ``a .. b`` runs from ``a - 0.5`` to ``b + 0.5``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import rfest  # noqa: E402
from rfest._gradient import gradient_map  # noqa: E402
from rfest._image import sample_image, tile_image  # noqa: E402
from rfest._plots import (  # noqa: E402
    GRID_COLORS,
    plot_gradient_map,
    plot_rf_grid,
    plot_rf_grids,
    plot_rf_growth,
)
from rfest._report import LayerRecord  # noqa: E402
from rfest_torch.examples import receptivefield_readme_net  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def narrow_readme_net() -> nn.Sequential:
    return receptivefield_readme_net(width=2)


def render(fig: object) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # type: ignore[attr-defined]
    data = buffer.getvalue()
    assert data.startswith(PNG_SIGNATURE)
    return data


def box_of(patch: object) -> tuple[float, float, float, float]:
    x, y = patch.get_xy()  # type: ignore[attr-defined]
    return float(x), float(y), float(patch.get_width()), float(patch.get_height())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def fields() -> dict[str, rfest.ReceptiveField]:
    return rfest.compute(narrow_readme_net(), (3, 96, 96), output=["conv2", "feature_grid"])


def test_rf_grid_draws_the_three_boxes_and_every_centre(fields: dict) -> None:
    rf = fields["feature_grid"]
    assert (rf.size, rf.stride, rf.padding) == ((34, 34), (4, 4), (0, 0))
    fig = plot_rf_grid(rf)
    render(fig)
    (ax,) = fig.axes
    boxes = {p.get_label(): p for p in ax.patches}
    # unit (i, j) covers rows 4i..4i+33, columns 4j..4j+33; centre unit 16 // 2 = 8.
    assert {label: box_of(p) for label, p in boxes.items()} == {
        "top-left (0, 0)": (-0.5, -0.5, 34, 34),
        "centre (8, 8)": (31.5, 31.5, 34, 34),
        "bottom-right (15, 15)": (59.5, 59.5, 34, 34),
    }
    colours = [tuple(p.get_edgecolor()) for p in boxes.values()]
    assert len(set(colours)) == 3
    from matplotlib.colors import to_rgba

    assert colours[0] == to_rgba(GRID_COLORS["top-left"])
    dots = next(c for c in ax.collections if c.get_label() == "centres")
    offsets = np.asarray(dots.get_offsets())
    assert offsets.shape == (16 * 16, 2)
    # centre of unit i: (34 - 1) / 2 + 4i = 16.5 + 4i, i = 0..15; offsets are (x=col, y=row).
    assert sorted(set(offsets[:, 0].tolist())) == [16.5 + 4 * i for i in range(16)]
    assert sorted(set(offsets[:, 1].tolist())) == [16.5 + 4 * i for i in range(16)]
    assert ax.get_images()[0].get_array().shape == (96, 96, 3)  # the sample picture


def test_rf_grid_reaches_into_padding() -> None:
    # size 5, stride 2, padding 2 on 8 px: unit 0 sees -2..2, unit 3 sees 4..8 (8 is padding).
    rf = rfest.ReceptiveField((5, 5), (2, 2), (2, 2), (0.0, 0.0), (8, 8), (4, 4))
    ax = plot_rf_grid(rf, np.zeros((8, 8))).axes[0]
    assert box_of(ax.patches[0]) == (-2.5, -2.5, 5, 5)
    assert box_of(ax.patches[2]) == (3.5, 3.5, 5, 5)
    assert ax.get_xlim() == (-3.0, 9.0)  # the boxes, not just the picture, are in view
    assert ax.get_ylim() == (9.0, -3.0)


def test_rf_grids_one_subplot_per_output(fields: dict) -> None:
    fig = plot_rf_grids(fields, layout=(1, 2))
    render(fig)
    conv2, grid = fig.axes
    assert conv2.get_title().startswith("conv2: size 7x7, stride 1x1")
    # conv2: unit i sees i..i+6; 90 units, centre 45 -> 45..51; last 89 -> 89..95.
    assert [box_of(p) for p in conv2.patches] == [
        (-0.5, -0.5, 7, 7),
        (44.5, 44.5, 7, 7),
        (88.5, 88.5, 7, 7),
    ]
    assert box_of(grid.patches[1]) == (31.5, 31.5, 34, 34)


def test_rf_grid_refuses_global_and_3d_fields() -> None:
    glob = rfest.ReceptiveField(None, None, None, None, (8, 8), (), is_global=True)
    with pytest.raises(ValueError, match="global"):
        plot_rf_grid(glob)
    cube = rfest.ReceptiveField((3,) * 3, (1,) * 3, (0,) * 3, (1.0,) * 3, (8,) * 3, (6,) * 3)
    with pytest.raises(ValueError, match="2-D"):
        plot_rf_grid(cube)


def test_gradient_map_support_and_box_agree(fields: dict) -> None:
    rf = fields["feature_grid"]
    grad = gradient_map(narrow_readme_net(), (3, 96, 96), unit=(2, 8), output="feature_grid")
    assert grad.shape == (96, 96)
    rows, cols = np.flatnonzero(grad.sum(axis=1)), np.flatnonzero(grad.sum(axis=0))
    # unit (2, 8): rows 8..41, columns 32..65.
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (8, 41, 32, 65)
    fig = plot_gradient_map(grad, rf=rf, unit=(2, 8), image=sample_image((96, 96)))
    render(fig)
    ax = fig.axes[0]
    (box,) = ax.patches
    assert box.get_label() == "field of unit (2, 8)"
    assert box_of(box) == (31.5, 7.5, 34, 34)
    _, overlay = ax.get_images()
    shown = overlay.get_array()
    assert float(shown.max()) == 1.0  # normalised for display only
    assert not np.any(np.isnan(np.ma.filled(shown, 0.0)))


def test_gradient_map_unit_defaults_to_the_centre_and_counts_from_the_end() -> None:
    # Conv1d k3 then stride-2 average pool k2: r4, j2; 16 px -> 14 -> 7 units.
    net = nn.Sequential(nn.Conv1d(1, 1, 3), nn.AvgPool1d(2))
    centre = gradient_map(net, (1, 16))  # unit 7 // 2 = 3: input 6..9
    last = gradient_map(net, (1, 16), unit=-1)  # unit 6: input 12..15
    assert np.flatnonzero(centre).tolist() == [6, 7, 8, 9]
    assert np.flatnonzero(last).tolist() == [12, 13, 14, 15]
    with pytest.raises(rfest.InputShapeError, match="outside"):
        gradient_map(net, (1, 16), unit=7)


def test_one_dimensional_gradient_map_shades_the_field() -> None:
    net = nn.Sequential(nn.Conv1d(1, 1, 3), nn.AvgPool1d(2))
    rf = rfest.compute(net, (1, 16))
    fig = plot_gradient_map(gradient_map(net, (1, 16), unit=2), rf=rf, unit=2)
    render(fig)
    (span,) = fig.axes[0].patches  # unit 2: input 4..7
    x0, x1 = span.get_x(), span.get_x() + span.get_width()
    assert (x0, x1) == (3.5, 7.5)


def test_drawing_into_given_axes() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    left, right = fig.subplots(1, 2)
    rf = rfest.ReceptiveField((3, 3), (1, 1), (1, 1), (0.0, 0.0), (6, 6), (6, 6))
    assert plot_rf_grid(rf, np.ones((6, 6, 3)), ax=right) is fig
    assert len(right.patches) == 3 and not left.patches


def test_growth_plot_lines_are_the_records() -> None:
    records = [
        LayerRecord("a", output_shape=(10, 8), size=(3, 5), stride=(1, 1), padding=(0, 0)),
        LayerRecord("broken", error="OutputNotFoundError: returns a tuple"),
        LayerRecord("b", output_shape=(5, 4), size=(4, 6), stride=(2, 2), padding=(0, 0)),
        LayerRecord("head", output_shape=(), is_global=True),
    ]
    fig = plot_rf_growth(records)
    render(fig)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert lines["size, axis 0"].get_xdata().tolist() == [0, 2]
    assert lines["size, axis 0"].get_ydata().tolist() == [3, 4]
    assert lines["size, axis 1"].get_ydata().tolist() == [5, 6]
    assert lines["stride, axis 1"].get_ydata().tolist() == [1, 2]
    assert lines["global"].get_xdata().tolist() == [3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "broken", "b", "head"]


def test_sample_image_sizes_and_tiles() -> None:
    image = sample_image((30, 50))
    assert image.shape == (30, 50, 3) and image.dtype == np.uint8
    assert image.std() > 10  # a photograph, not a blank
    tiled = tile_image(np.full((2, 2, 3), [200, 10, 10], np.uint8), 1)
    assert tiled.shape == (6, 6, 3)
    assert tiled[2:4, 2:4].tolist() == [[[200, 10, 10]] * 2] * 2  # centre keeps its colour
    assert tiled[0, 0].tolist() == [73, 73, 73]  # round((200 + 10 + 10) / 3): grey
    assert tile_image(np.full((2, 2, 3), 5, np.uint8), 2, shade=False).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="height, width"):
        sample_image((3, 4, 5))
