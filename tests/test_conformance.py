"""`rfest.testing` run against every backend: the three first-party ones and a toy
third-party plugin (tests/sample_plugin) installed through a real entry point, as pandas
tests its plotting backends: a ``*.dist-info/entry_points.txt`` in a folder on sys.path.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rfest
import rfest.testing
from conformance_backends import JaxBackend, KerasBackend, SampleBackend, TorchBackend

SAMPLE = Path(__file__).parent / "sample_plugin"


@pytest.fixture
def sample_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """rfest_sample installed: its code and a dist-info declaring its entry point."""
    info = tmp_path / "rfest_sample-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rfest_sample\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[rfest.backends]\nrfest_sample = rfest_sample:provider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(SAMPLE))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "rfest_sample"]:
        del sys.modules[name]


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.parametrize("check", rfest.testing.checks(SampleBackend()), ids=str)
def test_sample_plugin(check: rfest.testing.Check, sample_plugin: None) -> None:
    check()


def test_the_sample_plugin_is_found_through_its_entry_point(sample_plugin: None) -> None:
    import rfest_sample

    assert "rfest_sample" in rfest.available_backends()
    net = rfest_sample.Net({"conv": rfest_sample.Conv(rfest_sample._framework.np.ones((3, 3)))})
    assert rfest.compute(net, (1, 16, 16)).size == (3, 3)  # detected from the model's type


@pytest.mark.torch
@pytest.mark.skipif(not _has("torch"), reason="framework missing: torch")
@pytest.mark.parametrize("check", rfest.testing.checks(TorchBackend()), ids=str)
def test_torch(check: rfest.testing.Check) -> None:
    check()


@pytest.mark.keras
@pytest.mark.skipif(not _has("keras", "rfest_keras"), reason="framework missing: keras")
@pytest.mark.parametrize("check", rfest.testing.checks(KerasBackend()), ids=str)
def test_keras(check: rfest.testing.Check) -> None:
    check()


@pytest.mark.jax
@pytest.mark.skipif(not _has("jax", "flax"), reason="framework missing: jax")
@pytest.mark.parametrize("check", rfest.testing.checks(JaxBackend()), ids=str)
def test_jax(check: rfest.testing.Check) -> None:
    check()


def test_a_wrong_answer_fails_the_suite(
    sample_plugin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite can fail: a backend that reports the wrong padding is caught."""
    from rfest_sample import _framework

    real = _framework.out_size

    def shifted(layer: _framework.Layer, n: int) -> int:
        return real(layer, n) + 1

    monkeypatch.setattr("rfest_sample._provider.out_size", shifted)
    with pytest.raises(AssertionError, match="rfest_sample"):
        rfest.testing.check_backend(SampleBackend())
