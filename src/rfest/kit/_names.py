"""Output names: what ``output=`` asks for, and what each answer is reported as."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from rfest._errors import OutputNotFoundError
from rfest._options import check_outputs

__all__ = ["MODEL_OUTPUT", "did_you_mean", "resolve_outputs"]

MODEL_OUTPUT = "output"
"""Name under which the model's own output is reported when ``output=None``."""


def did_you_mean(name: str, known: Sequence[str], n: int = 3) -> str:
    """``" Did you mean 'a', 'b'?"`` for the known names closest to ``name``, else ``""``.

    Example:
        >>> did_you_mean("conv9", ["conv1", "conv2", "pool"])
        " Did you mean 'conv2', 'conv1'?"
    """
    close = difflib.get_close_matches(name, list(known), n=n)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def resolve_outputs(
    output: object,
    known: Sequence[str] | Callable[[], Sequence[str]],
    *,
    kind: str = "layer",
    naming: str = "",
) -> dict[str, str | None]:
    """``output=`` as ``{reported name: layer name, or None for the model's own output}``.

    ``output=None`` gives ``{MODEL_OUTPUT: None}``: the model's output, reported as
    ``"output"``. Names give ``{name: name}``, each checked against ``known`` (or what
    ``known()`` returns: it is called only when names are asked for). A layer named
    ``"output"`` is that layer: a provider looks a reported name up here, so the model's
    output never shadows it. ``naming`` ends the error message (how names are spelled).

    Example:
        >>> resolve_outputs(None, ["output", "conv"])
        {'output': None}
        >>> resolve_outputs(["output", "conv"], ["output", "conv"])
        {'output': 'output', 'conv': 'conv'}
        >>> resolve_outputs("conf", ["output", "conv"])
        Traceback (most recent call last):
        ...
        rfest._errors.OutputNotFoundError: the model has no layer named 'conf'. Did you mean 'conv'?
    """
    checked = check_outputs(output, f"a {kind} name")
    if checked is None:
        return {MODEL_OUTPUT: None}
    names = (checked,) if isinstance(checked, str) else checked
    listed = list(known() if callable(known) else known)
    for name in names:
        if name not in listed:
            raise OutputNotFoundError(
                f"the model has no {kind} named {name!r}.{did_you_mean(name, listed)}{naming}"
            )
    return {name: name for name in names}
