"""The front door: every option of every entry point checked once, the same way.

`rfest.compute`, `rfest.report`, `rfest.effective`, `rfest.gradient_map`, the ``rfest``
command and `rfest.compat` all pass their options through these checks before a backend
is chosen, so the same mistake gets the same error class and message everywhere:

- a bad value of an option (``dtype``, ``linearize``, ``max_input_size``, batch sizes,
  ``contribution``, ...) is an `rfest.OptionError`;
- a bad ``output=`` is an `rfest.OutputNotFoundError`.

Backends check only what needs the model (shapes, layer names).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rfest._errors import OptionError, OutputNotFoundError
from rfest._estimate import DEFAULT_MAX_INPUT_SIZE

__all__ = [
    "DEFAULT_MAX_INPUT_SIZE",
    "Contribution",
    "Dtype",
    "ProbeOptions",
    "check_choice",
    "check_count",
    "check_dtype",
    "check_flag",
    "check_outputs",
    "check_single_output",
]

Dtype = Literal["float32", "float64"]
"""Precision of the gradients: ``"float64"`` (exact far contributions) or ``"float32"``."""

Contribution = Literal["abs", "positive"]
"""How `rfest.effective` turns a signed gradient into a contribution."""


def check_choice(name: str, value: Any, choices: tuple[str, ...], meaning: str = "") -> str:
    """``value`` if it is one of ``choices``, else an `rfest.OptionError` naming them.

    Example:
        >>> check_choice("mode", "sum", ("abs", "max"))
        Traceback (most recent call last):
        ...
        rfest._errors.OptionError: mode='sum' is not supported; use one of ('abs', 'max')
    """
    if not isinstance(value, str) or value not in choices:
        raise OptionError(f"{name}={value!r} is not supported; use one of {choices}{meaning}")
    return value


def check_dtype(dtype: Any) -> Dtype:
    """``dtype`` as a `Dtype`, or an `rfest.OptionError`."""
    check_choice("dtype", dtype, get_args(Dtype))
    return dtype  # type: ignore[no-any-return]


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False (not 1, not "yes"), else an `rfest.OptionError`."""
    if not isinstance(value, bool):
        raise OptionError(f"{name}={value!r} must be True or False")
    return value


def check_count(name: str, value: Any, meaning: str = "", *, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``, else an `rfest.OptionError`.

    Example:
        >>> check_count("batch_size", 0)
        Traceback (most recent call last):
        ...
        rfest._errors.OptionError: batch_size=0 must be a positive int
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise OptionError(f"{name}={value!r} must be {kind}{meaning}")
    return int(value)


def check_outputs(output: Any, what: str = "a layer name") -> str | tuple[str, ...] | None:
    """``output=`` as None, one name, or a tuple of distinct names; else an
    `rfest.OutputNotFoundError`."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, Sequence) and all(isinstance(o, str) for o in output):
        names = tuple(output)
        if not names:
            raise OutputNotFoundError("output=[] names no output; pass None or some names")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise OutputNotFoundError(f"output names {twice} twice; name each output once")
        return names
    raise OutputNotFoundError(
        f"output={output!r}: expected None, {what}, or a list of them (the model's "
        f"output, one intermediate, several); got {type(output).__name__}"
    )


def check_single_output(output: Any, entry: str) -> str | None:
    """``output=`` for an entry point that measures one output: None or one name."""
    if output is None or isinstance(output, str):
        return output
    raise OutputNotFoundError(
        f"output={output!r}: {entry} measures one output; pass None (the model's output) "
        f"or one name, not a list"
    )


@dataclass(frozen=True)
class ProbeOptions:
    """The options every probe of the model shares, checked.

    Example:
        >>> ProbeOptions.check(dtype="float32", linearize=True, max_input_size=512)
        ProbeOptions(dtype='float32', linearize=True, max_input_size=512)
        >>> ProbeOptions.check(linearize="yes")
        Traceback (most recent call last):
        ...
        rfest._errors.OptionError: linearize='yes' must be True or False
    """

    dtype: Dtype = "float64"
    linearize: bool = True
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE

    @classmethod
    def check(
        cls,
        *,
        dtype: Any = "float64",
        linearize: Any = True,
        max_input_size: Any = DEFAULT_MAX_INPUT_SIZE,
    ) -> ProbeOptions:
        """Check each option; the first bad one raises `rfest.OptionError`."""
        return cls(
            dtype=check_dtype(dtype),
            linearize=check_flag("linearize", linearize),
            max_input_size=check_count(
                "max_input_size", max_input_size, " (the largest probe size along one axis)"
            ),
        )
