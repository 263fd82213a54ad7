"""What a probe will cost in memory, known before it is allocated.

One forward pass at batch 1 counts the elements of every layer's output (at any depth);
divided by the input's pixel count that is the model's footprint per input pixel. A
probe of ``batch x pixels`` then keeps about ``footprint x batch x pixels`` values alive
for its backward pass, plus the gradients in flight (:data:`BACKWARD_FACTOR`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from rfest import ProbeSizeError

__all__ = [
    "BACKWARD_FACTOR",
    "DEFAULT_MAX_MEMORY_GIB",
    "Budget",
    "count_elements",
    "run_counting",
]

DEFAULT_MAX_MEMORY_GIB = 2.0
"""Default ``max_memory_gib``: what one probe's activations and gradients may take."""

BACKWARD_FACTOR = 2.0
"""Activations kept for the backward pass, and gradients as large alongside them."""


def count_elements(model: keras.Model, run: Callable[[], Any]) -> int:
    """Elements of every layer output while ``run()`` calls ``model``; calls put back."""
    _, total = run_counting(model, run, dynamic=False)
    return int(total)


def run_counting(model: keras.Model, run: Callable[[], Any], *, dynamic: bool) -> tuple[Any, Any]:
    """``run()``'s result and the elements of every layer output while it ran: an int, or
    with ``dynamic`` a tensor (sizes known only when a compiled program runs)."""
    from rfest_keras._live import Patches, all_layers

    total: list[Any] = [0]
    patches = Patches()

    def counting(call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            for tensor in keras.tree.flatten(result):
                shape = getattr(tensor, "shape", None)
                if shape is None:
                    continue
                if dynamic:
                    total[0] = total[0] + keras.ops.cast(keras.ops.size(tensor), "float64")
                elif None not in tuple(shape):
                    total[0] += math.prod(int(s) for s in shape)
            return result

        return counted

    try:
        for layer in all_layers(model)[1:]:
            if not isinstance(layer, keras.Model):
                patches.set(layer, "call", counting(layer.call))
        result = run()
    finally:
        patches.restore()
    return result, total[0]


class Budget:
    """Splits a probe's units into batches that fit ``max_memory_gib``, or says why not."""

    def __init__(self, max_memory_gib: float, itemsize: int) -> None:
        self.limit = max_memory_gib * 2**30
        self.itemsize = itemsize
        self.per_pixel: float | None = None

    def measured(self, elements: int, pixels: int, channels: int) -> None:
        self.per_pixel = max(elements, 1) / pixels + channels

    def batch(self, pixels: int, units: int, spatial: tuple[int, ...]) -> int:
        """How many units one pass may probe at ``pixels`` input pixels (at least 1)."""
        if self.per_pixel is None:
            return units
        per_unit = self.per_pixel * pixels * self.itemsize * BACKWARD_FACTOR
        if per_unit > self.limit:
            raise ProbeSizeError(
                f"a probe input of spatial size {spatial} would need about "
                f"{per_unit / 2**30:.2g} GiB for one unit (this model keeps "
                f"{self.per_pixel:.0f} values per input pixel), more than max_memory_gib="
                f"{self.limit / 2**30:g}. The field is too large to measure in that budget: "
                f"raise max_memory_gib=..., lower max_input_size=..., or measure an earlier "
                f"layer"
            )
        return max(1, min(units, int(self.limit // per_unit)))

    def in_batches(
        self,
        spatial: tuple[int, ...],
        units: Sequence[tuple[int, ...]],
        maps: Callable[[Sequence[tuple[int, ...]]], np.ndarray],
    ) -> np.ndarray:
        """``maps(units)``, called on batches of units that fit the budget, joined."""
        step = self.batch(math.prod(spatial), len(units), spatial)
        parts = [maps(units[i : i + step]) for i in range(0, len(units), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
