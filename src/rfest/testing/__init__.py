"""A conformance suite for rfest backends, in the spirit of scikit-learn's ``check_estimator``.

A backend author describes how to build a few small reference networks in their framework
(`BackendUnderTest`); the suite builds them through the plugin and checks, on the real
entry point, what every backend must get right:

- exact answers: size, stride, padding and offset on reference geometries, against a
  recurrence worked here (`expected_field`), for the model's output and named layers;
- errors of the right class for an unknown output, a malformed shape, an unknown option;
- the provider keeps the protocol (shapes, non-negative maps of the right shape);
- the model is untouched (its state is equal before and after, linearized or not);
- determinism (the same call twice gives bit-identical maps) and thread safety (threads
  measuring at once get the serial answer).

Run all checks with `check_backend`, or one pytest case per check with `checks`::

    @pytest.mark.parametrize("check", rfest.testing.checks(MyBackend()), ids=str)
    def test_conformance(check):
        check()

Only numpy and the standard library are imported here.
"""

from rfest.testing._checks import Check, check_backend, checks
from rfest.testing._geometry import (
    REFERENCE_NETWORKS,
    BackendUnderTest,
    Conv,
    Layer,
    Pool,
    expected_field,
)

__all__ = [
    "REFERENCE_NETWORKS",
    "BackendUnderTest",
    "Check",
    "Conv",
    "Layer",
    "Pool",
    "check_backend",
    "checks",
    "expected_field",
]
