"""A picture to draw receptive fields on: matplotlib's sample photograph, resized and tiled.

The photograph (Grace Hopper, public domain) ships with matplotlib, so nothing is
downloaded. Pillow (a dependency of matplotlib) is imported only when a picture is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SAMPLE_IMAGE", "sample_image", "tile_image"]

SAMPLE_IMAGE = "grace_hopper.jpg"
"""File name of the photograph in matplotlib's sample data."""


def sample_image(shape: Sequence[int], *, tile_factor: int = 0, shade: bool = True) -> np.ndarray:
    """The sample photograph as a ``uint8`` RGB array of exactly ``(*shape, 3)``.

    Args:
        shape: ``(height, width)``: spatial size in input-axis order, e.g. a result's
            ``input_shape``.
        tile_factor: 0 for one picture; ``t > 0`` repeats it on a ``(2t + 1) x (2t + 1)``
            grid within the same size, which shows fields that reach past one picture.
        shade: with tiles, make every tile but the central one grey.

    Example:
        >>> image = sample_image((48, 64), tile_factor=1)
        >>> image.shape, image.dtype.name
        ((48, 64, 3), 'uint8')
    """
    height, width = _spatial_2d(shape)
    tile_factor = _tile_factor(tile_factor)
    tiles = 2 * tile_factor + 1
    # Each tile gets a whole number of pixels; the mosaic is then resized to the exact size.
    picture = _load((max(1, -(-width // tiles)), max(1, -(-height // tiles))))
    mosaic = tile_image(picture, tile_factor, shade=shade)
    return _resize(mosaic, (width, height))


def tile_image(image: np.ndarray, tile_factor: int, *, shade: bool = True) -> np.ndarray:
    """Repeat an RGB image on a ``(2t + 1) x (2t + 1)`` grid; other tiles grey if ``shade``.

    Example:
        >>> tile_image(np.zeros((2, 3, 3), np.uint8), 1).shape
        (6, 9, 3)
    """
    tile_factor = _tile_factor(tile_factor)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (height, width, 3), got shape {image.shape}")
    if tile_factor == 0:
        return image.copy()
    tiles = 2 * tile_factor + 1
    grey = np.repeat(image.astype(np.float64).mean(axis=2, keepdims=True), 3, axis=2)
    grey_tile = np.round(grey).astype(image.dtype)
    rows = []
    for i in range(tiles):
        row = []
        for j in range(tiles):
            centre = i == tile_factor and j == tile_factor
            row.append(image if centre or not shade else grey_tile)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def _load(size: tuple[int, int]) -> np.ndarray:
    """The photograph resized to ``size = (width, height)``."""
    from matplotlib import cbook
    from PIL import Image

    file: Any = cbook.get_sample_data(SAMPLE_IMAGE)
    with file:
        picture = Image.open(file).convert("RGB")
        picture.load()
    return np.asarray(picture.resize(size, Image.Resampling.LANCZOS))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if image.shape[1::-1] == size:
        return image
    resized: Any = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized)


def _spatial_2d(shape: Sequence[int]) -> tuple[int, int]:
    dims = tuple(shape)
    if len(dims) != 2 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in dims
    ):
        raise ValueError(
            f"shape={shape!r}: expected two positive ints (height, width), the spatial size "
            f"of a 2-D input"
        )
    return int(dims[0]), int(dims[1])


def _tile_factor(tile_factor: int) -> int:
    if isinstance(tile_factor, bool) or not isinstance(tile_factor, (int, np.integer)):
        raise ValueError(f"tile_factor={tile_factor!r} must be an int >= 0")
    if tile_factor < 0:
        raise ValueError(f"tile_factor={tile_factor!r} must be an int >= 0")
    return int(tile_factor)
