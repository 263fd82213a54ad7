"""A Keras layer called twice (a shared layer) has two outputs with different fields.

Functional model: ``shared`` (Conv2D k3) on the input, max pool 2, ``shared`` again. By
hand per axis: call 1 r3 j1; pool r4 j2; call 2 r4 + 2 * 2 = 8, j2; valid: padding 0.
The Keras provider names each call of a shared layer as the kit does (``name:k``).
"""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from keras import layers as L  # noqa: E402

import rfest  # noqa: E402

pytestmark = pytest.mark.keras


def shared_twice() -> keras.Model:
    inputs = keras.Input((32, 32, 1))
    shared = L.Conv2D(1, 3, name="shared")
    return keras.Model(inputs, shared(L.MaxPooling2D(2, name="pool")(shared(inputs))))


def test_the_model_output_is_the_second_call() -> None:
    rf = rfest.compute(shared_twice())
    assert (rf.size, rf.stride, rf.padding) == ((8, 8), (2, 2), (0, 0))


def test_the_bare_name_of_a_shared_layer_is_refused_and_each_call_is_named() -> None:
    with pytest.raises(rfest.OutputNotFoundError, match="'shared:1', 'shared:2'"):
        rfest.compute(shared_twice(), output="shared")
    calls = rfest.compute(shared_twice(), output=["shared:1", "shared:2"])
    assert calls["shared:1"].size == (3, 3)
    assert calls["shared:2"].size == (8, 8)
