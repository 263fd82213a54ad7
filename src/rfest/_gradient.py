"""The gradient map of one output unit: the picture the estimator reads a field from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rfest._errors import OutputNotFoundError
from rfest._estimate import DEFAULT_FREE_SIZE
from rfest._registry import detect_backend, make_provider
from rfest._units import resolve_unit

__all__ = ["gradient_map"]


def gradient_map(
    model: Any,
    input_shape: Sequence[int | None] | None = None,
    *,
    unit: int | Sequence[int] | None = None,
    backend: str | None = None,
    output: str | None = None,
    dtype: str = "float64",
    linearize: bool = True,
    **backend_options: Any,
) -> np.ndarray:
    """Magnitude of the gradient of one output unit with respect to the input.

    The map the estimator reads the field from: ``|d output[unit] / d input|``, the unit
    summed over channels and the gradient over input channels, at a positive input on the
    (by default linearized) model. Its non-zero part is the unit's receptive field,
    clipped to the input.

    Args:
        model: as for `rfest.compute`.
        input_shape: as for `rfest.compute`; a spatial size left None is probed at 32.
        unit: spatial index of the output unit; negative indices count from the end;
            None takes the centre unit ``(m0 // 2, m1 // 2, ...)``.
        backend: as for `rfest.compute`.
        output: None (the model's output) or the name of one intermediate.
        dtype: as for `rfest.compute`.
        linearize: as for `rfest.compute`.
        **backend_options: passed to the backend's factory.

    Returns:
        A float64 array of the input's spatial shape.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2))
        >>> grad = gradient_map(net, (1, 10, 10), unit=(0, -1))
        >>> grad.shape, [tuple(int(i) for i in np.flatnonzero(grad.sum(axis=a))[[0, -1]])
        ...              for a in (1, 0)]
        ((10, 10), [(0, 3), (6, 9)])
    """
    if output is not None and not isinstance(output, str):
        raise OutputNotFoundError(
            f"output={output!r}: gradient_map takes one output name (or None), not a list"
        )
    name = backend if backend is not None else detect_backend(model)
    provider = make_provider(
        name,
        model,
        input_shape=input_shape,
        output=output,
        dtype=dtype,
        linearize=linearize,
        **backend_options,
    )
    output_name = provider.output_names[0]
    spatial = tuple(DEFAULT_FREE_SIZE if n is None else int(n) for n in provider.spatial_shape)
    out_shape = tuple(int(m) for m in provider.output_shapes(spatial)[output_name])
    index = resolve_unit(unit, out_shape)
    maps = np.asarray(provider.gradient_maps(spatial, output_name, [index]), dtype=np.float64)
    result: np.ndarray = maps[0]
    return result
