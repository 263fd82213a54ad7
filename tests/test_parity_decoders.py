"""Every installed framework measures the same decoder to the same, hand-worked phases."""

from __future__ import annotations

import pytest

import rfest
from parity_specs import BUILDERS, DECODER_SPECS, NotBuildable, Spec

pytestmark = pytest.mark.skipif(not BUILDERS, reason="no framework with a parity builder")


def measure(framework: str, spec: Spec) -> rfest.ReceptiveField | None:
    try:
        model, input_shape, options = BUILDERS[framework](spec)
    except NotBuildable:
        return None
    with pytest.warns(rfest.NonUniformWarning, match="repeat every"):
        return rfest.compute(model, input_shape, **options)


@pytest.mark.parametrize("spec", DECODER_SPECS, ids=[s.name for s in DECODER_SPECS])
def test_every_framework_gives_the_hand_worked_phases(spec: Spec) -> None:
    assert spec.phases is not None
    expected = tuple(
        rfest.PhasePattern(len(phases), step, tuple(rfest.Phase(*p) for p in phases))
        for step, phases in spec.phases
    )
    measured = {name: measure(name, spec) for name in BUILDERS}
    results = {name: rf for name, rf in measured.items() if rf is not None}
    if len(results) < 2 and len(BUILDERS) >= 2:
        pytest.skip(f"fewer than two frameworks can build {spec.name}")
    for name, rf in results.items():
        assert rf.patterns() == expected, name
        assert (rf.size, rf.stride, rf.padding) == (spec.size, spec.stride, spec.padding), name
        assert not rf.uniform, name
    assert len({(rf.patterns(), rf.offset) for rf in results.values()}) == 1
