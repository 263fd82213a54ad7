"""``rfest.compute``: the one entry point users call."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, overload

from rfest._errors import NonUniformWarning
from rfest._options import DEFAULT_MAX_INPUT_SIZE, Dtype, ProbeOptions, check_outputs
from rfest._result import ReceptiveField
from rfest._session import Session

__all__ = ["compute", "fields_of"]


@overload
def compute(
    model: Any,
    input_shape: Sequence[int | None] | None = None,
    *,
    backend: str | None = None,
    output: str | None = None,
    dtype: Dtype = "float64",
    linearize: bool = True,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    **backend_options: Any,
) -> ReceptiveField: ...


@overload
def compute(
    model: Any,
    input_shape: Sequence[int | None] | None = None,
    *,
    backend: str | None = None,
    output: Sequence[str],
    dtype: Dtype = "float64",
    linearize: bool = True,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    **backend_options: Any,
) -> dict[str, ReceptiveField]: ...


def compute(
    model: Any,
    input_shape: Sequence[int | None] | None = None,
    *,
    backend: str | None = None,
    output: str | Sequence[str] | None = None,
    dtype: Dtype = "float64",
    linearize: bool = True,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    **backend_options: Any,
) -> ReceptiveField | dict[str, ReceptiveField]:
    """Measure the receptive field of a model's output (or named intermediates).

    Args:
        model: a ``torch.nn.Module`` (or a model of an installed third-party backend).
        input_shape: shape of ONE sample without the batch axis, in the framework's
            layout (PyTorch ``(C, *spatial)``). A spatial size may be None: rfest picks
            one. A given size defines the geometry ('same' padding depends on it); rfest
            may probe larger inputs, grown by multiples of the total stride so that
            geometry is kept, and says so in ``ReceptiveField.probe_shape``.
        backend: entry-point name (``"torch"``, or a third-party one). None detects it
            from the model's type without importing any framework.
        output: None for the model's output; a name (PyTorch: ``named_modules()`` name)
            for one intermediate; a list of names for several, returned as a dict in
            the given order.
        dtype: ``"float64"`` (default) keeps far, tiny gradient contributions visible;
            ``"float32"`` is faster.
        linearize: True (default) measures a linearized copy: pointwise activations
            become identity, max pooling becomes average pooling of the same window,
            normalisation becomes identity, weights positive constants, biases zero. The
            user's model is never modified. False uses the real model at a positive
            random input: gradients blocked by activations then shrink the field.
        max_input_size: largest probe size along one axis; a field that does not fit
            raises :class:`rfest.ProbeSizeError`.
        **backend_options: passed to the backend's factory.

    Returns:
        A :class:`rfest.ReceptiveField`, or ``dict[str, ReceptiveField]`` when ``output``
        is a list.

    Example:
        >>> import torch.nn as nn
        >>> import rfest
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
        >>> rf = rfest.compute(net, (3, 32, 32))
        >>> rf.size, rf.stride, rf.padding
        ((4, 4), (2, 2), (0, 0))
    """
    options = ProbeOptions.check(dtype=dtype, linearize=linearize, max_input_size=max_input_size)
    outputs = check_outputs(output, "a layer name")
    session = Session(
        model, input_shape, backend=backend, options=options, backend_options=backend_options
    )
    return fields_of(session, outputs)


@overload
def fields_of(session: Session, outputs: str | None) -> ReceptiveField: ...


@overload
def fields_of(session: Session, outputs: tuple[str, ...]) -> dict[str, ReceptiveField]: ...


def fields_of(
    session: Session, outputs: str | tuple[str, ...] | None
) -> ReceptiveField | dict[str, ReceptiveField]:
    """`rfest.compute`'s answer for checked ``outputs``, measured in ``session``."""
    results = session.measure(outputs)
    for result in results.values():
        if not result.uniform:
            warnings.warn(
                f"output {result.output!r}: units differ in receptive field (upsampling, "
                f"transposed convolution or mixed-stride branches); size {result.size} is "
                f"the largest seen and stride {result.stride} an average",
                NonUniformWarning,
                stacklevel=3,
            )
    if outputs is None or isinstance(outputs, str):
        return next(iter(results.values()))
    return results
