"""Token outputs of a PyTorch model laid out on their patch grid, for `rfest.effective`.

The torch provider reports only ``(N, C, *spatial)`` and ``(N, features)`` outputs, so for
a token output ``(N, tokens, C)`` it offers (`rfest.TokenGridProvider`) a module wrapping
the user's (without modifying it) whose output is the patch tokens laid out as
``(N, C, *grid)``: every provider and ``rfest.compute`` then see an ordinary feature map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rfest import InputShapeError, OutputNotFoundError
from rfest.kit import TokenGrid

__all__ = ["token_grid_model"]


def token_grid_model(
    model: nn.Module,
    name: str,
    target: nn.Module | None,
    layout: TokenGrid,
    spatial: tuple[int, ...],
) -> nn.Module:
    """A module whose output is the tokens of ``target`` (a module of ``model``, reported
    as ``name``; None: the model's own output) laid out as ``(N, C, *grid)``.

    ``layout.grid`` is the grid at input size ``spatial``; at another size ``n`` the grid
    is ``n * grid // spatial`` per axis (``n // patch``), so probes of other sizes
    (``rfest.compute``) see the grid the patch embedding makes there. ``model`` becomes a
    submodule of the wrapper and is not modified; the hook that captures a named output is
    removed before the forward pass returns.
    """
    label = f"the token output {name!r}" if target is not None else "the model's token output"

    class _Captured(Exception):
        """Stops the forward pass once the token output is seen."""

    class TokenGridOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self._tokens(x)
            if not isinstance(tokens, torch.Tensor):
                raise InputShapeError(f"{label} is a {type(tokens).__name__}, not a tensor")
            size = tuple(int(n) for n in x.shape[2:])
            grid = tuple(n * g // s for n, g, s in zip(size, layout.grid, spatial, strict=True))
            here = layout if size == spatial else TokenGrid(grid, layout.prefix)
            here.check(tuple(tokens.shape), label)
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
                raise OutputNotFoundError(f"module {name!r} did not run in the forward pass")
            return seen[0]

    return TokenGridOutput()
