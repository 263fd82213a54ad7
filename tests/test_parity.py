"""Every installed framework measures the same architecture to the same, hand-worked answer."""

from __future__ import annotations

import pytest

import rfest
from parity_specs import BUILDERS, SPECS, NotBuildable, Spec

pytestmark = pytest.mark.skipif(not BUILDERS, reason="no framework with a parity builder")


def measure(framework: str, spec: Spec) -> rfest.ReceptiveField | None:
    try:
        model, input_shape, options = BUILDERS[framework](spec)
    except NotBuildable:
        return None
    return rfest.compute(model, input_shape, **options)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_framework_gives_the_hand_worked_answer(spec: Spec) -> None:
    measured = {name: measure(name, spec) for name in BUILDERS}
    results = {name: rf for name, rf in measured.items() if rf is not None}
    if len(results) < 2 and len(BUILDERS) >= 2:
        pytest.skip(f"fewer than two frameworks can build {spec.name}")
    for name, rf in results.items():
        if spec.size is None:
            assert rf.is_global, name
        else:
            assert (rf.size, rf.stride, rf.padding) == (spec.size, spec.stride, spec.padding), name
            assert rf.uniform, name
    geometries = {(rf.size, rf.stride, rf.padding, rf.offset) for rf in results.values()}
    assert len(geometries) == 1, results
