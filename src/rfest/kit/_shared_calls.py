"""Names for the calls of a layer that runs more than once in one forward pass.

A layer called k times (torchvision's Bottleneck reuses one ``ReLU`` three times; a Keras
layer applied to two inputs) has k outputs, each with its own receptive field. Call ``j``
(1-based, in the order the calls return) is named ``"<layer name>:<j>"``, e.g.
``"layer1.0.relu:2"``. The bare name stands for a layer's only call; for a layer called
more than once it is refused with the list of its calls, never resolved to one of them.
Every backend names calls this way, so ``output=`` means the same in all of them.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from rfest._errors import OutputNotFoundError

__all__ = ["CALL_SEPARATOR", "call_names", "check_call", "split_call"]

CALL_SEPARATOR = ":"

_CALL = re.compile(r"^(?P<layer>.*):(?P<call>[1-9][0-9]*)$")


def split_call(name: str, layers: Collection[str]) -> tuple[str, int | None] | None:
    """``(layer name, call number or None)`` that ``name`` denotes, None for no such layer.

    A layer whose own name ends in ``:<digits>`` keeps it: exact names win.

    Example:
        >>> split_call("relu:2", {"relu", "conv"})
        ('relu', 2)
        >>> split_call("conv", {"relu", "conv"})
        ('conv', None)
        >>> split_call("pool:1", {"relu"}) is None
        True
    """
    if name in layers:
        return name, None
    match = _CALL.match(name)
    if match is not None and match["layer"] in layers:
        return match["layer"], int(match["call"])
    return None


def call_names(layer_name: str, count: int) -> list[str]:
    """What ``output=`` takes for each call of a layer called ``count`` times.

    Example:
        >>> call_names("relu", 3)
        ['relu:1', 'relu:2', 'relu:3']
        >>> call_names("conv", 1)
        ['conv']
    """
    if count <= 1:
        return [layer_name]
    return [f"{layer_name}{CALL_SEPARATOR}{j}" for j in range(1, count + 1)]


def check_call(name: str, layer_name: str, call: int | None, count: int) -> None:
    """Refuse the bare name of a layer called several times, or a call that never happens.

    Raises `rfest.OutputNotFoundError` listing the calls that exist.
    """
    if call is None and count > 1:
        calls = ", ".join(repr(n) for n in call_names(layer_name, count))
        raise OutputNotFoundError(
            f"layer {name!r} is called {count} times in one forward pass, so it has "
            f"{count} outputs with different receptive fields; name one call: {calls} "
            f"(numbered in the order the calls return)"
        )
    if call is not None and call > count:
        times = "never called" if count == 0 else f"called {count} time(s)"
        raise OutputNotFoundError(
            f"output {name!r} asks for call {call} of layer {layer_name!r}, which is "
            f"{times} in one forward pass"
        )
