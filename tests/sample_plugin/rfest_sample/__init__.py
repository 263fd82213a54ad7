"""rfest_sample: a complete third-party rfest backend, for a toy numpy "framework".

The framework: a `Net` applies named depthwise layers (`Conv`, `AvgPool`, `MaxPool`) to a
``(C, H, W)`` array. The backend (`provider`, the entry point ``rfest_sample`` in the group
``rfest.backends``) keeps only what the framework decides: running the layers, their
adjoint (its "autodiff"), and its linearization (positive weights, max pooling as
average pooling). Everything else comes from `rfest.kit`. docs/plugins.md walks through
it; tests/test_conformance.py installs it through a real entry point and runs
`rfest.testing` against it.
"""

from rfest_sample._framework import AvgPool, Conv, MaxPool, Net
from rfest_sample._provider import SampleProvider, provider

__all__ = ["AvgPool", "Conv", "MaxPool", "Net", "SampleProvider", "provider"]
