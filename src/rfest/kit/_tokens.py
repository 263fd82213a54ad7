"""Token sequences (vision transformers) mapped back onto their patch grid.

A token output has shape ``(N, tokens, C)``: optional leading tokens that belong to no
patch (class, distillation, register tokens), then one token per patch in row-major
order of the patch grid. :class:`TokenGrid` describes that layout; ``unit_to_token``
maps a grid unit to its token index.

A backend that reports token outputs as ``(tokens,)`` needs nothing more; one that reports
only feature maps offers ``token_grid_model(layout)`` (`rfest.TokenGridProvider`), a model
whose output is the patch tokens laid out as ``(N, C, *grid)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rfest._errors import InputShapeError

__all__ = ["TokenGrid"]


@dataclass(frozen=True)
class TokenGrid:
    """Layout of a token output: ``prefix`` non-patch tokens, then ``grid`` patches.

    Example:
        >>> layout = TokenGrid.of((2, 3), prefix=1)
        >>> layout.tokens, layout.unit_to_token((1, 0))
        (7, 4)
    """

    grid: tuple[int, ...]
    prefix: int = 0

    @classmethod
    def of(cls, grid: Sequence[int], prefix: int) -> TokenGrid:
        shape = tuple(grid)
        if not shape or not all(
            isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in shape
        ):
            raise InputShapeError(
                f"token_grid={grid!r} must be the patch grid's shape, positive ints per "
                f"spatial axis, e.g. (14, 14) for a 224-pixel ViT with 16-pixel patches"
            )
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise InputShapeError(
                f"prefix_tokens={prefix!r} must be an int >= 0: the number of tokens "
                f"before the patch tokens (1 for a class token)"
            )
        return cls(shape, prefix)

    @property
    def tokens(self) -> int:
        """Number of tokens of the sequence, prefix included."""
        return self.prefix + math.prod(self.grid)

    def unit_to_token(self, unit: tuple[int, ...]) -> int:
        """Index in the sequence of the token of grid unit ``unit`` (row-major)."""
        flat = 0
        for i, g in zip(unit, self.grid, strict=True):
            flat = flat * g + i
        return self.prefix + flat

    def check(self, shape: tuple[int, ...], where: str) -> None:
        """Raise unless ``shape`` (``(N, tokens, C)``) matches this layout."""
        if len(shape) != 3 or shape[1] != self.tokens:
            raise InputShapeError(
                f"{where} has shape {shape}; with token_grid={self.grid} and "
                f"prefix_tokens={self.prefix} expected (batch, {self.tokens}, channels): "
                f"batch-first tokens, {self.prefix} leading non-patch tokens then one per "
                f"patch in row-major order"
            )
