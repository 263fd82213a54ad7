"""A brute-force oracle for decoder tests: which input rows each output unit depends on.

Independent of rfest: the test's own copy of the network, with positive weights, runs in
float64 on an input of ones and on one copy per input index along an axis, that whole
slice raised by one, all in one batch (a kernel may round differently at another batch
size). With positive weights and a positive input nothing cancels, so an
output unit changes exactly when it depends on that slice (max pooling would hide a raise
that stays below the window's maximum: the decoder tests use average pooling or strided
convolutions, which is also what rfest's linearized copy sees).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import rfest

Forward = Callable[[np.ndarray], np.ndarray]
"""Batch of inputs (N, *spatial) -> outputs (N, *spatial_out), channels summed."""


def supports(forward: Forward, spatial: tuple[int, ...], axis: int) -> list[tuple[int, int]]:
    """``(first, last)`` input index along ``axis`` each output unit along it depends on.

    Units are those along ``axis`` through the middle of the other output axes.
    """
    n = spatial[axis]
    raised = np.ones((n + 1, *spatial))  # the last stays ones: the baseline, same batch
    for t in range(n):
        index: list[object] = [t, *(slice(None),) * len(spatial)]
        index[1 + axis] = t
        raised[tuple(index)] += 1.0
    after = forward(raised)
    before = after[n]
    middle = [m // 2 for m in before.shape]
    found = []
    for u in range(before.shape[axis]):
        unit = list(middle)
        unit[axis] = u
        changed = np.flatnonzero(
            [after[(t, *unit)] != before[tuple(unit)] for t in range(n)]  # type: ignore[index]
        )
        assert changed.size, f"unit {u} depends on no input row"
        found.append((int(changed[0]), int(changed[-1])))
    return found


def check_every_unit(rf: rfest.ReceptiveField, forward: Forward) -> None:
    """Every unit along every axis: an unclipped unit's support is exactly ``rf.box``;
    a clipped one's lies inside the part of its box within the input. Unclipped units
    must cover three periods or more, so the phases are checked where they hold.
    """
    assert rf.period is not None and rf.size is not None
    for axis, n in enumerate(rf.input_shape):
        found = supports(forward, rf.input_shape, axis)
        assert len(found) == rf.output_shape[axis]
        inside = 0
        for u, (lo, hi) in enumerate(found):
            index = [0] * rf.ndim
            index[axis] = u
            start, stop = rf.box(tuple(index))[axis]
            if rf.clipped(tuple(index))[axis]:
                assert max(start, 0) <= lo and hi <= min(stop, n) - 1, (axis, u, lo, hi)
            else:
                inside += 1
                assert (lo, hi) == (start, stop - 1), (axis, u, (lo, hi), (start, stop))
                assert rf.center(tuple(index))[axis] == (lo + hi) / 2
        period = rf.period[axis]
        assert period is not None and inside >= 3 * period, (axis, inside, period)
