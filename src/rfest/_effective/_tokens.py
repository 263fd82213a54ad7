"""Token sequences (vision transformers) mapped back onto their patch grid.

A token output has shape ``(N, tokens, C)``: optional leading tokens that belong to no
patch (class, distillation, register tokens), then one token per patch in row-major
order of the patch grid. :class:`TokenGrid` describes that layout; ``unit_to_token``
maps a grid unit to its token index.

The PyTorch backend reports only ``(N, C, *spatial)`` and ``(N, features)`` outputs, so
for it :func:`torch_token_grid_model` wraps the user's module (without modifying it) in a
module whose output is the patch tokens laid out as ``(N, C, *grid)``: every provider
and ``rfest.compute`` then see an ordinary feature map. torch is imported only there.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rfest._errors import InputShapeError, OutputNotFoundError

__all__ = ["TokenGrid", "torch_token_grid_model"]


@dataclass(frozen=True)
class TokenGrid:
    """Layout of a token output: ``prefix`` non-patch tokens, then ``grid`` patches."""

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


def torch_token_grid_model(
    model: Any, output: str | None, layout: TokenGrid, spatial: tuple[int, ...]
) -> Any:
    """A ``torch.nn.Module`` whose output is ``model``'s tokens laid out as ``(N, C, *grid)``.

    ``output`` names the module of ``model`` whose token output is wanted (None: the
    model's own output). ``layout.grid`` is the grid at input size ``spatial``; at another
    size ``n`` the grid is ``n * grid // spatial`` per axis (``n // patch``), so probes of
    other sizes (``rfest.compute``) see the grid the patch embedding makes there. ``model``
    becomes a submodule of the wrapper and is not modified; the hook that captures a named
    output is removed before the forward pass returns.
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"the torch backend takes an nn.Module, not {type(model).__name__}")
    target: nn.Module | None = None
    if output is not None:
        modules = dict(model.named_modules())
        if output not in modules:
            close = difflib.get_close_matches(output, list(modules), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise OutputNotFoundError(
                f"the model has no module named {output!r}.{hint} Names are those of "
                f"model.named_modules()"
            )
        target = modules[output]

    class _Captured(Exception):
        """Stops the forward pass once the token output is seen."""

    class TokenGridOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self._tokens(x)
            if not isinstance(tokens, torch.Tensor):
                raise InputShapeError(
                    f"output {output or 'of the model'!r} is a {type(tokens).__name__}, "
                    f"not a tensor of tokens"
                )
            size = tuple(int(n) for n in x.shape[2:])
            grid = tuple(n * g // s for n, g, s in zip(size, layout.grid, spatial, strict=True))
            here = layout if size == spatial else TokenGrid(grid, layout.prefix)
            here.check(tuple(tokens.shape), f"the token output {output or 'of the model'!r}")
            patches = tokens[:, layout.prefix :, :]
            return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)

        def _tokens(self, x: torch.Tensor) -> Any:
            if target is None:
                return self.model(x)
            seen: list[Any] = []

            def hook(module: nn.Module, args: Any, result: Any) -> None:
                seen.append(result)
                raise _Captured

            handle = target.register_forward_hook(hook)
            try:
                self.model(x)
            except _Captured:
                pass
            finally:
                handle.remove()
            if not seen:
                raise OutputNotFoundError(f"module {output!r} did not run in the forward pass")
            return seen[0]

    return TokenGridOutput()
