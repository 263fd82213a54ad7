"""Backend registry: entry points faked with a *.dist-info on sys.path, as pandas tests do."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import rfest
from rfest import _registry

PLUGIN = """
import numpy as np

class Provider:
    def __init__(self, model, **options):
        self.spatial_shape = (16,)
        self.output_names = ("out",)
        self.options = options

    def output_shapes(self, spatial_shape):
        return {"out": tuple(spatial_shape)}

    def gradient_maps(self, spatial_shape, output_name, units):
        maps = np.zeros((len(units), *spatial_shape))
        for k, (i,) in enumerate(units):
            maps[k, max(0, i - 1) : i + 2] = 1.0
        return maps

class ToyModel:
    pass

def factory(model, **options):
    return Provider(model, **options)

def not_a_provider(model, **options):
    return object()
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "toyplugin.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "brokenplugin.py").write_text("raise RuntimeError('boom at import')\n")
    info = tmp_path / "toyplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[rfest.backends]\n"
        "toyplugin = toyplugin:factory\n"
        "broken = brokenplugin:factory\n"
        "notprovider = toyplugin:not_a_provider\n"
        "missingdep = module_that_is_not_installed:factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registry, "_factories", {})
    yield tmp_path
    for name in ("toyplugin", "brokenplugin"):
        sys.modules.pop(name, None)


def test_third_party_plugin_is_listed_detected_and_used(plugins: Path) -> None:
    assert "toyplugin" in rfest.available_backends()
    assert "toyplugin" not in sys.modules  # listing imports nothing
    import toyplugin

    model = toyplugin.ToyModel()
    rf = rfest.compute(model)  # detected from the model's module
    assert (rf.size, rf.stride, rf.padding) == ((3,), (1,), (1,))


def test_broken_plugin_is_named_and_others_keep_working(plugins: Path) -> None:
    with pytest.raises(rfest.BackendLoadError, match=r"'broken'.*boom at import"):
        rfest.compute(object(), backend="broken")
    with pytest.raises(rfest.BackendLoadError, match="'missingdep'"):
        rfest.compute(object(), backend="missingdep")
    rf = rfest.compute(object(), backend="toyplugin")
    assert rf.size == (3,)


def test_plugin_returning_a_non_provider(plugins: Path) -> None:
    with pytest.raises(rfest.BackendLoadError, match=r"not a GradientProvider.*output_shapes"):
        rfest.compute(object(), backend="notprovider")


def test_unknown_backend_lists_what_is_installed(plugins: Path) -> None:
    with pytest.raises(rfest.UnknownBackendError, match=r"installed: .*toyplugin") as info:
        rfest.compute(object(), backend="toyplugn")
    assert "Did you mean 'toyplugin'" in str(info.value)


def test_unrecognised_model_and_plain_callable() -> None:
    with pytest.raises(rfest.UnrecognizedModelError, match="Installed backends"):
        rfest.compute(object())
    with pytest.raises(rfest.UnrecognizedModelError, match="backend="):
        rfest.compute(lambda x: x)


def test_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_factories", {})
    monkeypatch.setattr(_registry, "_framework_installed", lambda name: False)

    def fail() -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    class Point:
        name, value = "torch", "rfest_torch:provider"

        def load(self) -> None:
            fail()

    monkeypatch.setattr(_registry, "_entry_points", lambda: {"torch": Point()})
    with pytest.raises(rfest.BackendNotInstalledError, match=r"pip install 'rfest\[torch\]'"):
        rfest.compute(object(), backend="torch")
    assert "torch" not in rfest.available_backends()


def test_detection_does_not_import_frameworks() -> None:
    code = (
        "import sys, rfest\n"
        "rfest.available_backends()\n"
        "try:\n    rfest.compute(object())\nexcept rfest.RFEstError:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_runtime_registration_refuses_silent_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_factories", {})
    rfest.register_backend("mine", lambda model, **options: model)
    with pytest.raises(ValueError, match="replace=True"):
        rfest.register_backend("mine", lambda model, **options: model)
