"""``receptivefield.image`` on rfest: the default picture, resized and tiled.

The ``receptivefield`` package shipped four photographs; rfest draws on the public-domain
photograph that ships with matplotlib, whatever ``name`` asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rfest._image import sample_image, tile_image
from rfest.compat.types import ImageShape

__all__ = ["get_default_image", "get_default_images", "tile_numpy_image", "tile_pil_image"]

_NAMES = ("grace_hopper", "lena", "cat", "doge", "grumpy")


def get_default_images() -> list[str]:
    """Names `get_default_image` accepts; all give the same photograph.

    Example:
        >>> get_default_images()[0]
        'grace_hopper'
    """
    return list(_NAMES)


def get_default_image(
    shape: Sequence[int],
    tile_factor: int = 0,
    shade: bool = True,
    as_image: bool = False,
    name: str = "lena",
) -> Any:
    """The default picture resized to ``shape = (width, height[, channels])``, then tiled.

    Returns a ``uint8`` array ``(height * n, width * n, 3)``, ``n = 2 * tile_factor + 1``
    (the tiles around the centre grey when ``shade``), or a PIL image if ``as_image``.

    Example:
        >>> get_default_image((64, 48), tile_factor=1).shape
        (144, 192, 3)
    """
    if name not in _NAMES:
        raise ValueError(f"image name {name!r} is not one of {list(_NAMES)}")
    size = ImageShape(*shape)
    picture = tile_image(sample_image((size.h, size.w)), int(tile_factor), shade=shade)
    if as_image:
        from PIL import Image

        return Image.fromarray(picture)
    return picture


def tile_numpy_image(image: np.ndarray, tile_factor: int = 0, shade: bool = True) -> np.ndarray:
    """Tile an RGB array on a ``(2t + 1) x (2t + 1)`` grid (see `rfest.sample_image`)."""
    return tile_image(np.asarray(image, dtype=np.uint8), int(tile_factor), shade=shade)


def tile_pil_image(image: Any, tile_factor: int = 0, shade: bool = True) -> Any:
    """`tile_numpy_image` for a PIL image."""
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"))
    return Image.fromarray(tile_numpy_image(rgb, tile_factor, shade))
