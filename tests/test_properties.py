"""Property-based tests: rfest on random valid networks equals the layer recurrences.

The oracle is ``tests/rf_calculator.py`` (recurrences, cross-checked tap by tap on every
example); the networks come from ``tests/prop_networks.py``. The default profile runs a few
examples per framework, derandomized; ``RFEST_HYPOTHESIS=long`` (``nox -s props``) runs
thousands with fresh randomness; ``RFEST_HYPOTHESIS_EXAMPLES=N`` sets the count. Failing
examples found so far are regression tests in ``tests/test_estimate_regressions.py``.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("hypothesis")


from hypothesis import HealthCheck, given, settings

import rfest
from prop_networks import check, describe, networks
from rf_calculator import BruteForceProvider, Net, check_recurrence, recurrence
from rfest._estimate import estimate

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
    {"core": 5000, "torch": 3000, "keras": 600, "flax": 600}
    if _LONG
    else {"core": 150, "torch": 40, "keras": 5, "flax": 5}
)


def _settings(framework: str) -> settings:
    profile = settings.get_profile("rfest-long" if _LONG else "rfest-fast")
    count = os.environ.get("RFEST_HYPOTHESIS_EXAMPLES")  # one count for every framework
    return settings(profile, max_examples=int(count) if count else _EXAMPLES[framework])


@_settings("core")
@given(net=networks("torch"))
def test_estimator_on_brute_force_gradients_matches_the_recurrences(net: Net) -> None:
    # No framework: the gradient maps are the calculator's tap-by-tap dependencies, with
    # every feature torch has (folding and wrapping padding, ceil mode, branches).
    check_recurrence(net)
    expected = recurrence(net)
    rf = estimate(BruteForceProvider(net), "output")
    assert (rf.size, rf.stride, rf.padding, rf.uniform) == (
        tuple(f.size for f in expected),
        tuple(f.stride for f in expected),
        tuple(f.padding for f in expected),
        True,
    ), describe(net)


@pytest.mark.torch
@_settings("torch")
@given(net=networks("torch"))
def test_torch_networks_match_the_recurrences(net: Net) -> None:
    pytest.importorskip("torch")
    check("torch", net)


@pytest.mark.keras
@_settings("keras")
@given(net=networks("keras"))
def test_keras_networks_match_the_recurrences(net: Net) -> None:
    pytest.importorskip("keras")
    check("keras", net)


@pytest.mark.jax
@_settings("flax")
@given(net=networks("flax"))
def test_flax_networks_match_the_recurrences(net: Net) -> None:
    pytest.importorskip("flax")
    if "jax" not in rfest.available_backends():
        import rfest_jax

        rfest.register_backend("jax", rfest_jax.provider, replace=True)
    check("flax", net)
