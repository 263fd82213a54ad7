"""Periodic fields without a framework: the estimator on synthetic phase patterns, and how
results, text, JSON, reports, compat and plots show them.

The fake provider draws each unit's support from a pattern the test writes down (unit
``k*P + r`` sees ``k*Q + start_r ... + size_r - 1``, cut at the input's ends, as zero
padding does), so every expectation is that pattern.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest

import rfest
from rfest import Phase, PhasePattern, ReceptiveField


@dataclass
class PatternProvider:
    """``P`` output units per ``Q`` input pixels along each axis, fields from ``patterns``."""

    patterns: Sequence[PhasePattern]
    spatial_shape: tuple[int | None, ...]
    output_names: tuple[str, ...] = ("out",)
    calls: list[tuple[int, ...]] = field(default_factory=list)

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        shape = tuple(
            p.period * (n // p.step) for p, n in zip(self.patterns, spatial_shape, strict=True)
        )
        return dict.fromkeys(self.output_names, shape)

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        self.calls.append(tuple(spatial_shape))
        maps = np.zeros((len(units), *spatial_shape))
        for k, unit in enumerate(units):
            masks = []
            for p, u, n in zip(self.patterns, unit, spatial_shape, strict=True):
                start, stop = p.box(u)
                mask = np.zeros(n, dtype=bool)
                mask[max(start, 0) : max(min(stop, n), 0)] = True
                masks.append(mask)
            maps[k][np.ix_(*masks)] = 1.0
        return maps


@pytest.fixture(autouse=True)
def fake_backend() -> None:
    rfest.register_backend("pattern", lambda model, **options: model, replace=True)


def measure(provider: PatternProvider) -> ReceptiveField:
    with pytest.warns(rfest.NonUniformWarning, match="repeat every"):
        return rfest.compute(provider, backend="pattern")


def pattern(step: int, *phases: tuple[int, int]) -> PhasePattern:
    return PhasePattern(len(phases), step, tuple(Phase(size, start) for size, start in phases))


TRANSPOSED = pattern(1, (3, -1), (4, -1))  # k3 s2 p1 after a k3 conv
UNET = pattern(4, (44, -22), (44, -22), (44, -18), (44, -18))
FPN = pattern(16, (47, -31), (31, -15), (31, -15), (47, -15))
LONG = pattern(1, *[(2 + (r % 3 == 0), -1 + (r == 31)) for r in range(32)])  # period 32


@pytest.mark.parametrize(
    "truth", [TRANSPOSED, UNET, FPN, LONG], ids=["tconv", "unet", "fpn", "long"]
)
def test_recovers_every_phase(truth: PhasePattern) -> None:
    rf = measure(PatternProvider([truth], (96,)))
    assert rf.pattern == (truth,)
    assert rf.period == (truth.period,) and rf.period_step == (truth.step,)
    assert rf.stride_fraction == (Fraction(truth.step, truth.period),)
    assert rf.size == (max(p.size for p in truth.phases),)
    assert rf.padding == (-truth.phases[0].start,)
    assert rf.offset == (truth.phases[0].start + (truth.phases[0].size - 1) / 2,)
    for u in range(rf.output_shape[0]):
        assert rf.box(u) == (truth.box(u),)


def test_grows_by_whole_steps_when_no_unit_fits() -> None:
    # 16 input pixels, fields of 44: the probe must grow, by multiples of Q = 4.
    provider = PatternProvider([UNET, TRANSPOSED], (16, 12))
    rf = measure(provider)
    assert rf.pattern == (UNET, TRANSPOSED)
    assert rf.input_shape == (16, 12) and rf.grown
    assert rf.probe_shape is not None and (rf.probe_shape[0] - 16) % 4 == 0
    assert rf.output_shape == (16, 24)


def test_border_units_are_clipped_not_phases() -> None:
    rf = measure(PatternProvider([UNET], (64,)))
    assert rf.clipped(0) == (True,) and rf.clipped(31) == (False,)
    assert rf.clipped(63) == (True,)
    assert rf.box(0) == ((-22, 22),) and rf.center(0) == (-0.5,)


def test_period_longer_than_probed_keeps_the_older_answer() -> None:
    # Period 128 > 64: rfest says units differ and gives the largest size; no phases.
    truth = pattern(1, *[(3, -1 + (r >= 64)) for r in range(128)])
    with pytest.warns(rfest.NonUniformWarning, match="largest seen") as record:
        rf = rfest.compute(PatternProvider([truth], (40,)), backend="pattern")
    assert not any("repeat every" in str(w.message) for w in record)
    assert rf.pattern is None and rf.period == (None,) and rf.phases == (None,)
    assert rf.size == (3,)


def test_uniform_results_gain_a_period_of_one() -> None:
    rf = ReceptiveField((7, 5), (4, 2), (3, 0), (0.0, 2.0), (32, 20), (8, 8))
    assert rf.period == (1, 1) and rf.period_step == (4, 2)
    assert rf.phases == ((Phase(7, -3),), (Phase(5, 0),))
    assert rf.pattern is None and rf.box((2, 3)) == ((5, 12), (6, 11))
    data = json.loads(json.dumps(rf.to_dict()))
    assert data["period"] == [1, 1] and data["stride_fraction"] == ["4", "2"]
    assert "pattern" not in data


def non_uniform() -> ReceptiveField:
    """A 2-D result as rfest gives it after a k3 s2 p1 transposed conv along both axes."""
    return ReceptiveField(
        (4, 4),
        (1, 1),
        (1, 1),
        (0.0, 0.0),
        (8, 8),
        (15, 15),
        uniform=False,
        output="up",
        pattern=(TRANSPOSED, TRANSPOSED),
    )


def test_to_dict_and_text() -> None:
    rf = non_uniform()
    data = json.loads(json.dumps(rf.to_dict()))
    assert data["period"] == [2, 2] and data["period_step"] == [1, 1]
    assert data["stride_fraction"] == ["1/2", "1/2"]
    assert data["phases"][0] == [{"size": 3, "start": -1}, {"size": 4, "start": -1}]
    assert "repeat every (2, 2) units" in str(rf)
    # unit 3 = 1 * 2 + 1: phase 1, one step on: 1 - 1 ... 1 - 1 + 3.
    assert rf.box((3, 0)) == ((0, 4), (-1, 2)) and rf.center((3, 0)) == (1.5, 0.0)


def test_cli_text() -> None:
    from rfest._cli import _text

    text = _text({"up": non_uniform()}, 0.1)
    assert "period  (2, 2) units, (1, 1) input pixels on (stride 1/2, 1/2)" in text
    assert "axis 0: phase size@start 3@-1, 4@-1" in text


def test_report_record() -> None:
    from rfest._report import LayerRecord, LayerReport

    record = LayerRecord.from_field("up", non_uniform())
    assert record.period == (2, 2) and record.period_step == (1, 1)
    assert json.loads(json.dumps(record.to_dict()))["period"] == [2, 2]
    text = LayerReport((record,), input_shape=(8, 8)).to_text()
    assert "non-uniform (every 2x2 units, 1x1 px on)" in text


def test_compat_gives_the_exact_mean_stride() -> None:
    from rfest.compat._base import describe

    assert describe(non_uniform()).stride == (0.5, 0.5)


def test_grid_draws_a_box_per_phase() -> None:
    pytest.importorskip("matplotlib")
    fig = rfest.plot_rf_grid(non_uniform(), np.zeros((8, 8)))
    labels = [patch.get_label() for patch in fig.axes[0].patches]
    assert labels == [
        "phase (0, 0) unit (6, 6)",
        "phase (0, 1) unit (6, 7)",
        "phase (1, 0) unit (7, 6)",
        "phase (1, 1) unit (7, 7)",
        "top-left (0, 0)",
        "bottom-right (14, 14)",
    ]
    colours = {tuple(patch.get_edgecolor()) for patch in fig.axes[0].patches[:4]}
    assert len(colours) == 4
    assert "every 2x2 units" in fig.axes[0].get_title()
