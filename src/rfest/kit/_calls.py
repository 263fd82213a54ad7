"""Running the user's model: whatever it raises becomes a `rfest.ModelCallError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rfest._errors import ModelCallError, RFEstError

__all__ = ["model_errors"]


@contextmanager
def model_errors(shape: tuple[int, ...], axes: str, hint: str = "") -> Iterator[None]:
    """Run the block; an error of rfest passes, any other becomes `rfest.ModelCallError`
    naming the input ``shape`` (described by ``axes``) and chaining the original.

    Example:
        >>> with model_errors((1, 3, 8, 8), "(batch, channels, *spatial)"):
        ...     raise RuntimeError("kernel too large")
        Traceback (most recent call last):
        ...
        rfest._errors.ModelCallError: the model raised RuntimeError on an input of shape ...
    """
    try:
        yield
    except RFEstError:
        raise
    except Exception as exc:
        raise ModelCallError(
            f"the model raised {type(exc).__name__} on an input of shape {tuple(shape)} "
            f"{axes}: {exc}.{hint}"
        ) from exc
