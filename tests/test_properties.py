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
from prop_networks import NotBuildable, build, check, describe, mirrored_networks, networks
from rf_calculator import (
    Branches,
    BruteForceProvider,
    Conv,
    Layer,
    Net,
    Pool,
    check_recurrence,
    recurrence,
)
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


def _same_along_every_axis(layers: tuple[Layer, ...]) -> bool:
    """Whether every layer has one kernel, stride, dilation and padding for all axes."""
    for layer in layers:
        if isinstance(layer, Branches):
            if not all(_same_along_every_axis(branch) for branch in layer.branches):
                return False
            continue
        if isinstance(layer, Conv):
            per_axis = [layer.kernel, layer.stride, layer.dilation]
            if not isinstance(layer.padding, str):
                per_axis.append(layer.padding)
        elif isinstance(layer, Pool):
            per_axis = [layer.window, layer.stride, layer.padding]
        else:
            continue
        if any(len(set(entries)) > 1 for entries in per_axis):
            return False
    return True


@pytest.mark.keras
@_settings("keras")
@given(net=networks("keras", dims=2))
def test_keras_proves_axes_alike_exactly_for_networks_the_same_along_both(net: Net) -> None:
    # The claim halves the probes of a square input, so it must never be made wrongly;
    # made whenever it holds, the saving reaches every such network (TensorFlow only).
    keras = pytest.importorskip("keras")
    from rfest_keras import KerasGradientProvider

    try:
        model, input_shape = build("keras", net)
    except NotBuildable:
        return
    provider = KerasGradientProvider(model, input_shape=input_shape)
    alike = _same_along_every_axis(net.layers) and keras.backend.backend() == "tensorflow"
    assert provider.axes_alike(provider.output_names[0]) == alike, describe(net)


@pytest.mark.keras
@_settings("keras")
@given(net=mirrored_networks("keras"))
def test_keras_networks_alike_along_both_axes_match_the_recurrences(net: Net) -> None:
    # Measured along the second axis only (the claim above), answered for both.
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
