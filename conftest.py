"""Collection rules: any subset of frameworks may be installed.

- Modules (doctests, test helpers) that import a missing framework are not collected.
- ``RFEST_REQUIRE_FRAMEWORKS`` turns "framework missing" skips into failures, so CI cannot
  pass by skipping: ``1`` or ``all`` for every framework, or a comma-separated list
  (``torch,matplotlib``) for a session that installs only those.
- Backends registered at run time are unregistered after each test.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator

import pytest

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob += [
        "src/rfest_torch/*",
        "tests/torch_models.py",
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
    collect_ignore_glob += [
        "src/rfest_keras/*",
        "src/rfest/compat/keras.py",
        "tests/keras_models.py",
        "tests/keras_recurrence.py",
    ]
if importlib.util.find_spec("jax") is None or importlib.util.find_spec("flax") is None:
    collect_ignore_glob += ["src/rfest_jax/*", "tests/flax_models.py"]

FRAMEWORKS = ("torch", "keras", "jax", "flax", "tensorflow", "matplotlib", "PIL")
_MISSING = re.compile(r"could not import '([\w.]+)'|framework missing: (\w+)")


def _required() -> set[str]:
    value = os.environ.get("RFEST_REQUIRE_FRAMEWORKS", "").strip().lower()
    if value in ("", "0", "no", "false"):
        return set()
    if value in ("1", "all", "yes", "true"):
        return {f.lower() for f in FRAMEWORKS}
    return {name.strip() for name in value.split(",") if name.strip()}


def _missing_required(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The skip reason, when it skips for a framework that must be installed."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    match = _MISSING.search(reason)
    if match is None:
        return None
    name = (match.group(1) or match.group(2)).split(".")[0].lower()
    return reason if name in _required() else None


def _fail_if_required(report: pytest.CollectReport | pytest.TestReport) -> None:
    reason = _missing_required(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"RFEST_REQUIRE_FRAMEWORKS forbids this skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_if_required(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_if_required(outcome.get_result())  # type: ignore[attr-defined]


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
