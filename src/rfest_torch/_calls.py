"""Names for the calls of a module that runs more than once in one forward pass.

A module called k times (torchvision's Bottleneck reuses one ``ReLU`` three times) has k
outputs, each with its own receptive field. Call ``j`` (1-based, in the order the calls
return) is named ``"<module name>:<j>"``, e.g. ``"layer1.0.relu:2"``. The bare name stands
for a module's only call; for a module called more than once it is refused with the list
of its calls, never resolved silently to one of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from rfest import OutputNotFoundError

__all__ = ["CALL_SEPARATOR", "Target", "call_names", "check_calls", "counting_calls", "parse"]

CALL_SEPARATOR = ":"

_CALL = re.compile(r"^(?P<module>.*):(?P<call>[1-9][0-9]*)$")


@dataclass(frozen=True)
class Target:
    """The output a name asks for: ``call`` of ``module`` (None: its only call)."""

    module: nn.Module
    module_name: str
    call: int | None

    @property
    def index(self) -> int:
        """1-based call number to capture."""
        return 1 if self.call is None else self.call


def parse(name: str, modules: Mapping[str, nn.Module]) -> Target | None:
    """The target ``name`` denotes, or None when no module has that name.

    A module whose own name ends in ``:<digits>`` keeps it: exact names win.
    """
    if name in modules:
        return Target(modules[name], name, None)
    match = _CALL.match(name)
    if match is not None and match["module"] in modules:
        return Target(modules[match["module"]], match["module"], int(match["call"]))
    return None


def call_names(module_name: str, count: int) -> list[str]:
    """What ``output=`` takes for each call of a module called ``count`` times."""
    if count <= 1:
        return [module_name]
    return [f"{module_name}{CALL_SEPARATOR}{j}" for j in range(1, count + 1)]


def check_calls(name: str, target: Target, count: int) -> None:
    """Refuse a bare name of a module called several times, or a call that never happens."""
    if target.call is None and count > 1:
        calls = ", ".join(repr(n) for n in call_names(target.module_name, count))
        raise OutputNotFoundError(
            f"module {name!r} is called {count} times in one forward pass, so it has "
            f"{count} outputs with different receptive fields; name one call: {calls} "
            f"(numbered in the order the calls return)"
        )
    if target.call is not None and target.call > count:
        times = "never called" if count == 0 else f"called {count} time(s)"
        raise OutputNotFoundError(
            f"output {name!r} asks for call {target.call} of module {target.module_name!r}, "
            f"which is {times} in one forward pass"
        )


@contextmanager
def counting_calls(
    model: nn.Module, counts: dict[str, int], active: Any, order: list[tuple[str, int]]
) -> Iterator[None]:
    """Count the calls of every named module of ``model`` into ``counts`` while active,
    and list each call ``(name, call number)`` in ``order`` as it returns.

    ``active()`` is checked in each hook, so passes of other threads are not counted.
    """

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if active():
                counts[name] = counts.get(name, 0) + 1
                order.append((name, counts[name]))

        return hook

    handles = [
        module.register_forward_hook(hook_for(name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
