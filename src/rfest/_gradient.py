"""The gradient map of one output unit: the picture the estimator reads a field from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rfest._options import Dtype, ProbeOptions, check_single_output
from rfest._session import Session

__all__ = ["gradient_map"]


def gradient_map(
    model: Any,
    input_shape: Sequence[int | None] | None = None,
    *,
    unit: int | Sequence[int] | None = None,
    backend: str | None = None,
    output: str | None = None,
    dtype: Dtype = "float64",
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
    options = ProbeOptions.check(dtype=dtype, linearize=linearize)
    output = check_single_output(output, "gradient_map")
    session = Session(
        model,
        input_shape,
        backend=backend,
        options=options,
        backend_options=backend_options,
    )
    return session.gradient_map(check_single_output(output, "gradient_map"), _unit_or_none(unit))


def _unit_or_none(unit: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if unit is None:
        return None
    return (unit,) if isinstance(unit, int | np.integer) else tuple(unit)
