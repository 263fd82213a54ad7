"""Shapes: one sample's shape split per layout, and the spatial shape of an output."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal

from rfest._errors import InputShapeError, OutputShapeError

__all__ = ["Layout", "output_spatial_shape", "split_input_shape"]

Layout = Literal["channels_first", "channels_last"]
"""Where the channel axis sits: ``(C, *spatial)`` (PyTorch) or ``(*spatial, C)``."""

_FORM = {"channels_first": "(C, *spatial)", "channels_last": "(*spatial, C)"}
_EXAMPLE = {"channels_first": "(3, 224, 224)", "channels_last": "(224, 224, 3)"}


def split_input_shape(
    input_shape: Sequence[int | None] | None, layout: Layout, *, framework: str
) -> tuple[int, tuple[int | None, ...]]:
    """``(channels, spatial sizes)`` of one sample's shape, batch axis excluded.

    Spatial sizes may be None (rfest picks them); 1 to 3 spatial axes. Each mistake is an
    `rfest.InputShapeError` that names ``framework``'s layout.

    Example:
        >>> split_input_shape((224, None, 3), "channels_last", framework="Keras")
        (3, (224, None))
        >>> split_input_shape((3, 0, 8), "channels_first", framework="PyTorch")
        Traceback (most recent call last):
        ...
        rfest._errors.InputShapeError: input_shape=(3, 0, 8): spatial size input_shape[1] = 0 ...
    """
    form, example = _FORM[layout], _EXAMPLE[layout]
    if input_shape is None:
        raise InputShapeError(
            f"a {framework} model does not declare its input size: pass "
            f"input_shape={form}, e.g. {example}; spatial sizes may be None to let rfest "
            f"choose"
        )
    shape = tuple(input_shape)
    if not 2 <= len(shape) <= 4:
        raise InputShapeError(
            f"input_shape={shape} has {len(shape)} axes; expected {form} with 1 to 3 "
            f"spatial axes, without the batch axis, e.g. {example}"
        )
    first = 1 if layout == "channels_first" else 0
    channel_index = 0 if layout == "channels_first" else len(shape) - 1
    channels = shape[channel_index]
    spatial = shape[first : first + len(shape) - 1]
    if not _positive_int(channels):
        raise InputShapeError(
            f"input_shape={shape}: the channel count input_shape[{channel_index}] = "
            f"{channels!r} must be a positive int ({framework} layout is {form})"
        )
    for index, size in enumerate(spatial, start=first):
        if size is not None and not _positive_int(size):
            raise InputShapeError(
                f"input_shape={shape}: spatial size input_shape[{index}] = {size!r} is not a "
                f"positive integer; give each spatial size as an int >= 1, or None to let "
                f"rfest choose"
            )
    assert channels is not None
    return int(channels), tuple(None if s is None else int(s) for s in spatial)


def output_spatial_shape(
    name: str, shape: Sequence[int], spatial_axes: int, layout: Layout
) -> tuple[int, ...]:
    """The spatial shape of output ``name`` of full shape ``shape`` (batch first).

    ``(batch, features)`` has no spatial axes: ``()``. Anything but that and
    ``(batch, channels, *spatial)`` / ``(batch, *spatial, channels)`` with as many spatial
    axes as the input is an `rfest.OutputShapeError` (a token sequence, for one).

    Example:
        >>> output_spatial_shape("conv", (1, 8, 6, 6), 2, "channels_first")
        (6, 6)
        >>> output_spatial_shape("head", (1, 10), 2, "channels_last")
        ()
    """
    full = tuple(int(s) for s in shape)
    if len(full) == spatial_axes + 2:
        return full[2:] if layout == "channels_first" else full[1:-1]
    if len(full) == 2:
        return ()
    form = (
        "(batch, channels, *spatial)"
        if layout == "channels_first"
        else ("(batch, *spatial, channels)")
    )
    if len(full) > spatial_axes + 2:
        hint = (
            "; the model gives it more axes than its input has (a reshape of its input "
            "into an image?): rfest measures along the input's own spatial axes, so "
            "measure a model whose input is the image itself, spatial axes and channels "
            "(a grayscale (H, W) input as (H, W, 1)), or an output with the input's axes"
        )
    else:
        hint = (
            "; measure an earlier output that still has the input's spatial axes (before "
            "a flatten, or a reshape into tokens)"
        )
    raise OutputShapeError(
        f"output {name!r} has shape {full}; expected {form} with {spatial_axes} spatial "
        f"axes like the input, or (batch, features){hint}"
    )


def _positive_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) and int(value) > 0
