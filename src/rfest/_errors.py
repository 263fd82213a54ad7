"""The one exception tree of rfest, rooted at :class:`RFEstError`.

Every message says what was wrong, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendLoadError",
    "BackendNotInstalledError",
    "EstimationError",
    "InputShapeError",
    "ModelCallError",
    "NoDependenceError",
    "NonFiniteGradientError",
    "NonUniformWarning",
    "OptionError",
    "OutputNotFoundError",
    "OutputShapeError",
    "ProbeSizeError",
    "RFEstError",
    "SizeDependentGeometryError",
    "UnknownBackendError",
    "UnrecognizedModelError",
]


class RFEstError(Exception):
    """Base class of every error rfest raises on purpose."""


class BackendError(RFEstError):
    """A backend could not be chosen, found or loaded."""


class UnknownBackendError(BackendError, LookupError):
    """``backend=`` names no installed backend."""


class BackendNotInstalledError(BackendError, ImportError):
    """The backend is known but its framework (or extra) is not installed."""


class BackendLoadError(BackendError):
    """A backend plugin failed to import or returned something unusable."""


class UnrecognizedModelError(BackendError, TypeError):
    """No backend recognises the model's type, or the type is ambiguous."""


class InputShapeError(RFEstError, ValueError):
    """``input_shape`` is malformed or does not fit the model."""


class OptionError(RFEstError, ValueError):
    """An option of ``rfest.compute`` (or of a backend) is unknown or has a bad value."""


class OutputNotFoundError(RFEstError, LookupError):
    """``output=`` names no layer or intermediate of the model."""


class OutputShapeError(InputShapeError):
    """An output is not ``(batch, channels, *spatial)`` nor ``(batch, features)``: e.g. a
    token sequence (pass ``token_grid=`` to `rfest.effective`) or an output whose spatial
    axes differ in number from the input's."""


class ModelCallError(RFEstError):
    """The model raised while rfest ran it; the original error is chained."""


class EstimationError(RFEstError):
    """The gradients do not describe a valid receptive field."""


class NoDependenceError(EstimationError):
    """An output unit does not depend on the input at all."""


class NonFiniteGradientError(EstimationError):
    """A gradient map holds NaN or infinity."""


class ProbeSizeError(EstimationError):
    """The receptive field does not fit in the largest probe input allowed."""


class SizeDependentGeometryError(EstimationError):
    """Stride or alignment changes with the input size (e.g. adaptive pooling)."""


class NonUniformWarning(UserWarning):
    """Output units differ in receptive field; ``uniform`` is False."""
