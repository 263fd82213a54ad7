"""Heatmap statistics on distributions whose moments and mass extents are known in closed form.

No framework: these are the numbers every backend's effective field is summarised with.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from rfest import heatmap_statistics
from rfest._errors import NoDependenceError, NonFiniteGradientError


def trinomial(n: int) -> np.ndarray:
    """[1, 1, 1] convolved with itself n times: n stacked 3-tap box filters, as integers."""
    counts = np.array([1], dtype=np.int64)
    for _ in range(n):
        counts = np.convolve(counts, np.array([1, 1, 1], dtype=np.int64))
    return counts


def fewest_holding(counts: np.ndarray, fraction: Fraction) -> int:
    """Fewest entries of ``counts`` whose sum is at least ``fraction`` of the total, exactly.

    For a unimodal distribution (the trinomial is one) the largest entries form one
    contiguous run, so this is also the shortest interval holding that mass.
    """
    total = int(counts.sum())
    held = 0
    for taken, value in enumerate(sorted(counts.ravel().tolist(), reverse=True), start=1):
        held += value
        if Fraction(held, total) >= fraction:
            return taken
    raise AssertionError("unreachable: all entries hold the whole mass")


@pytest.mark.parametrize("n", [1, 2, 3, 6, 10])
def test_trinomial_moments_and_extents_in_one_dimension(n: int) -> None:
    # Each [1, 1, 1] / 3 step adds variance ((-1)^2 + 0 + 1^2) / 3 = 2/3, so n steps have
    # sigma sqrt(2n/3); the distribution is symmetric about its middle index n.
    counts = trinomial(n)
    stats = heatmap_statistics(counts.astype(np.float64), fractions=(0.25, 0.5, 0.9, 0.99))
    assert stats.center_of_mass == pytest.approx((n,), abs=1e-12)
    assert stats.sigma[0] == pytest.approx(math.sqrt(2 * n / 3), abs=1e-12)
    # Masses are k / 3^n: never within 1e-12 of 0.25, 0.5, 0.9, 0.99, so float fractions
    # decide exactly as the exact Fractions below.
    for f in stats.fractions:
        length = fewest_holding(counts, Fraction(str(f)))
        assert stats.extent[f] == (length,), f
        start, stop = stats.interval[f][0]
        assert stop - start == length
        if length % 2:  # odd runs of the symmetric distribution are centred on n
            assert (start + stop - 1) / 2 == n


def test_separable_two_dimensional_statistics_use_marginals() -> None:
    # outer(trinomial(4), trinomial(2)) placed at rows 3.., columns 5..: marginals are the two
    # trinomials shifted, so centre (3 + 4, 5 + 2) and sigma (sqrt(8/3), sqrt(4/3)).
    rows, cols = trinomial(4), trinomial(2)
    heat = np.zeros((16, 12))
    heat[3 : 3 + rows.size, 5 : 5 + cols.size] = np.outer(rows, cols)
    stats = heatmap_statistics(heat, fractions=(0.5, 0.9))
    assert stats.center_of_mass == pytest.approx((7.0, 7.0), abs=1e-12)
    assert stats.sigma == pytest.approx((math.sqrt(8 / 3), math.sqrt(4 / 3)), abs=1e-12)
    product = np.outer(rows, cols)
    for f in (0.5, 0.9):
        assert stats.extent[f] == (
            fewest_holding(rows, Fraction(str(f))),
            fewest_holding(cols, Fraction(str(f))),
        )
        assert stats.area[f] == fewest_holding(product, Fraction(str(f)))
    assert stats.area[0.5] <= stats.area[0.9]


def test_asymmetric_distribution_takes_the_heaviest_shortest_window() -> None:
    # Mass [0, 1, 5, 1, 3, 0] (total 10): 50 % needs one pixel (index 2, 5/10); 90 % (9)
    # no 2-run reaches (best 1+5 = 6); of the 3-runs 0+1+5 = 6, 1+5+1 = 7, 5+1+3 = 9, so
    # indices 2..4. Highest-density area: 5 + 3 + 1 >= 9, three pixels, contour level 1.
    # Mean (1 + 10 + 3 + 12) / 10 = 2.6; variance
    # (1*1.6^2 + 5*0.6^2 + 1*0.4^2 + 3*1.4^2) / 10 = (2.56 + 1.8 + 0.16 + 5.88) / 10 = 1.04.
    stats = heatmap_statistics(np.array([0.0, 1, 5, 1, 3, 0]), fractions=(0.5, 0.9))
    assert stats.center_of_mass[0] == pytest.approx(2.6, abs=1e-12)
    assert stats.sigma[0] == pytest.approx(math.sqrt(1.04), abs=1e-12)
    assert stats.interval[0.5] == ((2, 3),)
    assert stats.interval[0.9] == ((2, 5),)
    assert stats.area[0.9] == 3 and stats.level[0.9] == 1.0


def test_three_dimensional_marginals() -> None:
    # A single voxel at (1, 2, 3) and an equal one at (3, 2, 1): centre (2, 2, 2),
    # sigma (1, 0, 1) (each axis: two points at distance 1 from the mean).
    heat = np.zeros((4, 5, 6))
    heat[1, 2, 3] = heat[3, 2, 1] = 2.0
    stats = heatmap_statistics(heat)
    assert stats.center_of_mass == pytest.approx((2.0, 2.0, 2.0), abs=1e-12)
    assert stats.sigma == pytest.approx((1.0, 0.0, 1.0), abs=1e-12)
    assert stats.area[0.5] == 1 and stats.area[0.9] == 2


def test_invalid_heatmaps_are_errors() -> None:
    with pytest.raises(NoDependenceError, match="zero everywhere"):
        heatmap_statistics(np.zeros((5, 5)))
    with pytest.raises(NonFiniteGradientError):
        heatmap_statistics(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="non-negative"):
        heatmap_statistics(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="fractions"):
        heatmap_statistics(np.ones(3), fractions=(0.0,))
