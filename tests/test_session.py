"""One session per call: the backend is resolved once, each provider built once, and the
float32 scout serves compute and report alike. A counting fake backend shows the builds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rfest
from fake_provider import Axis, FakeProvider

# Two named layers of one 1-D stack: "a" is a 3-tap conv, "b" a 3-tap conv after it (5).
GEOMETRY = {"a": Axis(3, 1), "b": Axis(5, 1)}


class Layered(FakeProvider):
    def layer_names(self) -> tuple[str, ...]:
        return tuple(GEOMETRY)

    def output_shapes(self, spatial_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        n = spatial_shape[0]
        return {name: (GEOMETRY[name].out_len(n),) for name in self.output_names}

    def gradient_maps(
        self, spatial_shape: tuple[int, ...], output_name: str, units: Any
    ) -> np.ndarray:
        self.axes = [GEOMETRY[output_name]]
        return super().gradient_maps(spatial_shape, output_name, units)


@pytest.fixture
def builds() -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def factory(model: object, **options: Any) -> Layered:
        seen.append(options)
        output = options["output"]
        names = ("b",) if output is None else (output,) if isinstance(output, str) else output
        return Layered(axes=[GEOMETRY["b"]], spatial_shape=(None,), output_names=tuple(names))

    rfest.register_backend("counting", factory)
    return seen


def _dtypes(seen: list[dict[str, Any]]) -> list[str]:
    return [options["dtype"] for options in seen]


def test_compute_builds_its_provider_and_one_float32_scout(builds: list[dict[str, Any]]) -> None:
    rf = rfest.compute(object(), backend="counting", output=["a", "b"])
    assert {name: field.size for name, field in rf.items()} == {"a": (3,), "b": (5,)}
    assert _dtypes(builds) == ["float64", "float32"]
    assert [o["output"] for o in builds] == [["a", "b"], ["a", "b"]]


def test_float32_needs_no_scout(builds: list[dict[str, Any]]) -> None:
    rfest.compute(object(), backend="counting", dtype="float32")
    assert _dtypes(builds) == ["float32"]


def test_report_measures_with_the_scout_too(builds: list[dict[str, Any]]) -> None:
    result = rfest.report(object(), backend="counting")
    assert [(r.name, r.size) for r in result] == [("a", (3,)), ("b", (5,))]
    shared = [o for o in builds if o["output"] == ["a", "b"]]
    assert _dtypes(shared) == ["float64", "float32"]


def test_gradient_map_builds_one_provider(builds: list[dict[str, Any]]) -> None:
    grad = rfest.gradient_map(object(), backend="counting", output="a", unit=4)
    assert np.flatnonzero(grad).tolist() == [4, 5, 6]
    assert len(builds) == 1
