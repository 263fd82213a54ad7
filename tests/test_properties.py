"""Property-based tests: rfest on random valid networks equals the layer recurrences.

The oracle is ``tests/rf_calculator.py`` (recurrences, cross-checked tap by tap on every
example); the networks come from ``tests/prop_networks.py``. The default profile runs a few
examples per framework, derandomized; ``RFEST_HYPOTHESIS=long`` (``nox -s props``) runs
thousands with fresh randomness. Failing examples found so far are regression tests in
``tests/test_estimate_regressions.py``.
"""

from __future__ import annotations

import os
import warnings

import pytest
from hypothesis import HealthCheck, given, settings

import rfest
from prop_networks import NotBuildable, build, describe, networks
from rf_calculator import Net, check_recurrence, recurrence

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    "print_blob": True,
}
settings.register_profile("rfest-fast", max_examples=1, derandomize=True, database=None, **_COMMON)
settings.register_profile("rfest-long", max_examples=1, **_COMMON)
_LONG = os.environ.get("RFEST_HYPOTHESIS") == "long"

# Examples per framework: a minute or two for the whole module on two cores by default.
_EXAMPLES = (
    {"torch": 3000, "keras": 600, "flax": 600}
    if _LONG
    else {
        "torch": 60,
        "keras": 8,
        "flax": 8,
    }
)


def _settings(framework: str) -> settings:
    profile = settings.get_profile("rfest-long" if _LONG else "rfest-fast")
    return settings(profile, max_examples=_EXAMPLES[framework])


def check(framework: str, net: Net) -> None:
    check_recurrence(net)
    expected = recurrence(net)
    try:
        model, input_shape = build(framework, net)
    except NotBuildable:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rf = rfest.compute(model, input_shape)
    got = (rf.size, rf.stride, rf.padding, rf.uniform)
    want = (
        tuple(f.size for f in expected),
        tuple(f.stride for f in expected),
        tuple(f.padding for f in expected),
        True,
    )
    assert got == want, describe(net)


@pytest.mark.torch
@_settings("torch")
@given(net=networks("torch"))
def test_torch_networks_match_the_recurrences(net: Net) -> None:
    pytest.importorskip("torch")
    check("torch", net)
