"""Collection rules: doctests that need a framework are skipped where it is missing."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

# TensorFlow 2.21's oneDNN CPU kernels crash on rfest's thin probes (docs/keras.md); the
# switch must be set before TensorFlow is first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob += [
        "src/rfest_torch/*",
        "src/rfest/_api.py",
        "src/rfest/_effective/_analysis.py",
        "src/rfest/_gradient.py",
        "src/rfest/_plots/_fields.py",
        "src/rfest/_report.py",
        "src/rfest/compat/pytorch.py",
    ]
if importlib.util.find_spec("matplotlib") is None:
    collect_ignore_glob += [
        "src/rfest/_plots/*",
        "src/rfest/_image.py",
        "src/rfest/compat/*",
    ]
if importlib.util.find_spec("keras") is None:
    collect_ignore_glob += ["src/rfest_keras/*", "src/rfest/compat/keras.py"]
if importlib.util.find_spec("jax") is None or importlib.util.find_spec("flax") is None:
    collect_ignore_glob += ["src/rfest_jax/*"]


@pytest.fixture(autouse=True)
def _restore_backend_registry() -> Iterator[None]:
    """Backends a test or doctest registers at run time are gone after it."""
    from rfest import _registry

    saved = dict(_registry._factories)
    try:
        yield
    finally:
        _registry._factories.clear()
        _registry._factories.update(saved)
