"""rfest.kit, the public helpers every backend shares: same input, same answer and error."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

import rfest
from rfest import kit


def test_the_model_output_never_shadows_a_layer_named_output() -> None:
    assert kit.resolve_outputs(None, ["output"]) == {kit.MODEL_OUTPUT: None}
    assert kit.resolve_outputs("output", ["output"]) == {"output": "output"}


def test_names_are_checked_lazily_with_did_you_mean() -> None:
    def known() -> list[str]:
        raise AssertionError("listing the layers is not needed for output=None")

    assert kit.resolve_outputs(None, known) == {"output": None}
    with pytest.raises(rfest.OutputNotFoundError, match="Did you mean 'conv1'"):
        kit.resolve_outputs(["conv1", "conv_1x"], ["conv1", "pool"], naming=" (named_modules)")
    with pytest.raises(rfest.OutputNotFoundError, match="twice"):
        kit.resolve_outputs(["a", "a"], ["a"])


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((3, 224, None), "channels_first", (3, (224, None))),
        ((224, None, 3), "channels_last", (3, (224, None))),
        ((1, 8), "channels_first", (1, (8,))),
        ((np.int64(2), 4, 4, 4), "channels_first", (2, (4, 4, 4))),
    ],
)
def test_input_shapes_split_per_layout(
    shape: tuple[int | None, ...], layout: kit.Layout, expected: object
) -> None:
    assert kit.split_input_shape(shape, layout, framework="X") == expected


@pytest.mark.parametrize(
    ("shape", "phrase"),
    [
        (None, "does not declare"),
        ((3,), "has 1 axes"),
        ((3, 8, 8, 8, 8), "has 5 axes"),
        ((0, 8, 8), "channel count input_shape[0] = 0"),
        ((True, 8, 8), "channel count input_shape[0] = True"),
        ((3, -8, 8), "spatial size input_shape[1] = -8"),
        ((3, 8.5, 8), "spatial size input_shape[1] = 8.5"),
    ],
)
def test_malformed_input_shapes(shape: tuple[object, ...] | None, phrase: str) -> None:
    with pytest.raises(rfest.InputShapeError, match=re.escape(phrase)):
        kit.split_input_shape(shape, "channels_first", framework="X")  # type: ignore[arg-type]


def test_output_spatial_shapes_and_token_outputs() -> None:
    assert kit.output_spatial_shape("a", (1, 4, 5, 6), 2, "channels_first") == (5, 6)
    assert kit.output_spatial_shape("a", (1, 5, 6, 4), 2, "channels_last") == (5, 6)
    assert kit.output_spatial_shape("a", (1, 10), 2, "channels_last") == ()
    with pytest.raises(rfest.OutputShapeError, match=r"\(1, 65, 32\).*before a flatten"):
        kit.output_spatial_shape("tokens", (1, 65, 32), 2, "channels_last")
    # an (H, W) input reshaped into an image inside the model: say what to measure instead
    with pytest.raises(rfest.OutputShapeError, match=r"more axes than its input.*\(H, W, 1\)"):
        kit.output_spatial_shape("c1", (1, 26, 26, 8), 1, "channels_last")


def test_model_errors_chain_and_let_rfest_errors_pass() -> None:
    with (
        pytest.raises(rfest.ModelCallError, match=r"ZeroDivisionError.*Fix it") as info,
        kit.model_errors((1, 4), "(batch, x)", " Fix it."),
    ):
        1 / 0  # noqa: B018
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(rfest.OutputNotFoundError), kit.model_errors((1, 4), "(batch, x)"):
        raise rfest.OutputNotFoundError("mine")


def test_probe_inputs_are_positive_and_fixed() -> None:
    assert np.array_equal(kit.probe_input((2, 3), linearize=True), np.ones((2, 3)))
    real = kit.probe_input((64,), linearize=False, dtype="float32")
    assert real.dtype == np.float32 and real.min() >= 0.5 and real.max() < 1.5
    assert np.array_equal(real, kit.probe_input((64,), linearize=False, dtype="float32"))


def test_the_shape_cache_computes_once_under_threads() -> None:
    cache, runs, start = kit.ShapeCache(), [], threading.Barrier(4)

    def compute() -> dict[str, tuple[int, ...]]:
        runs.append(1)
        return {"a": (3,)}

    def ask() -> None:
        start.wait()
        assert cache.get((np.int64(8),), compute) == {"a": (3,)}

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 1


def test_dtype_is_checked_as_at_the_front_door() -> None:
    assert kit.check_dtype("float32") == "float32"
    with pytest.raises(rfest.OptionError, match="dtype='float16'"):
        kit.check_dtype("float16")
