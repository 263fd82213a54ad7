"""Reference networks described without a framework, and their worked receptive fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["REFERENCE_NETWORKS", "BackendUnderTest", "Conv", "Layer", "Pool", "expected_field"]


@dataclass(frozen=True)
class Conv:
    """A square 2-D convolution: ``kernel`` taps per axis, zero ``padding`` on both sides."""

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1


@dataclass(frozen=True)
class Pool:
    """A square 2-D pooling window (``max`` or average), no padding."""

    kernel: int
    stride: int
    max: bool = False


Layer = Conv | Pool


REFERENCE_NETWORKS: Mapping[str, tuple[Layer, ...]] = {
    "one 3x3 convolution": (Conv(3),),
    "two strided, padded convolutions": (Conv(3, 2, 1), Conv(3, 2, 1)),
    "dilated then plain": (Conv(3, dilation=2), Conv(3)),
    "convolution, max pooling, convolution": (Conv(5, padding=2), Pool(2, 2, max=True), Conv(3)),
    "average pooling, strided convolution": (Pool(3, 1), Conv(4, 2, 1)),
}
"""Small 2-D networks every backend must measure exactly; their layers are named
``"layer0"``, ``"layer1"``, ... and each keeps the channel count."""


def expected_field(layers: Sequence[Layer]) -> tuple[int, int, int, float]:
    """``(size, stride, padding, offset)`` along each axis, by the recurrence
    ``r += (k_eff - 1) * j; padding += p * j; j *= s`` (offset: centre of unit 0).

    Example:
        >>> expected_field([Conv(3, 2, 1), Conv(3, 2, 1)])
        (7, 4, 3, 0.0)
    """
    size, jump, padding = 1, 1, 0
    for layer in layers:
        dilation = layer.dilation if isinstance(layer, Conv) else 1
        pad = layer.padding if isinstance(layer, Conv) else 0
        size += (dilation * (layer.kernel - 1)) * jump
        padding += pad * jump
        jump *= layer.stride
    return size, jump, padding, (size - 1) / 2 - padding


@runtime_checkable
class BackendUnderTest(Protocol):
    """What a backend author writes to run the suite against their backend.

    ``name``
        The backend's entry-point name (``rfest.available_backends()`` lists it).
    ``build(layers, channels)``
        A model of the framework applying ``layers`` in order, each keeping ``channels``
        channels, layer ``k`` named ``f"layer{k}"`` (so ``output="layer0"`` measures it).
        Weights are up to you: the suite measures the linearized model.
    ``input_shape(spatial, channels)``
        One sample's shape in the framework's layout (``(C, H, W)`` or ``(H, W, C)``).
    ``state(model)``
        Everything rfest must leave as it found it (weights, buffers, flags) as named numpy
        arrays or plain values, compared with ``==`` / ``np.array_equal``.
    """

    name: str

    def build(self, layers: Sequence[Layer], channels: int) -> Any: ...

    def input_shape(self, spatial: tuple[int, int], channels: int) -> tuple[int, ...]: ...

    def state(self, model: Any) -> Mapping[str, Any]: ...


def same_state(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Names whose value differs between two `BackendUnderTest.state` snapshots."""
    names = sorted(set(before) | set(after))
    differ = []
    for name in names:
        a, b = before.get(name), after.get(name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            equal = (
                a is not None
                and b is not None
                and np.shape(a) == np.shape(b)
                and bool(np.array_equal(a, b))
            )
        else:
            equal = a == b
        if not equal:
            differ.append(name)
    return differ
