"""Names for the calls of a module that runs more than once in one forward pass.

A module called k times (torchvision's Bottleneck reuses one ``ReLU`` three times) has k
outputs, each with its own receptive field. Call ``j`` (1-based, in the order the calls
return) is named ``"<module name>:<j>"``, e.g. ``"layer1.0.relu:2"``. The bare name stands
for a module's only call; for a module called more than once it is refused with the list
of its calls, never resolved silently to one of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from rfest.kit import CALL_SEPARATOR, call_names, check_call, split_call

__all__ = ["CALL_SEPARATOR", "Target", "call_names", "check_calls", "counting_calls", "parse"]


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
    """The target ``name`` denotes, or None when no module has that name."""
    found = split_call(name, modules.keys())
    if found is None:
        return None
    module_name, call = found
    return Target(modules[module_name], module_name, call)


def check_calls(name: str, target: Target, count: int) -> None:
    """Refuse a bare name of a module called several times, or a call that never happens."""
    check_call(name, target.module_name, target.call, count)


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
