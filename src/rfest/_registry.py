"""Backend plugins: entry-point group ``rfest.backends``, lazy loading, model-type detection.

Rules this module keeps:

- Listing and detecting backends never imports a framework. Detection reads the modules
  that define the model's type (its MRO), the way einops checks ``sys.modules``.
- A backend is loaded (its entry point imported) only when it is used, then cached.
- A plugin that fails to load is named in the error; other backends keep working.
"""

from __future__ import annotations

import difflib
import importlib.util
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from rfest._errors import (
    BackendLoadError,
    BackendNotInstalledError,
    OptionError,
    RFEstError,
    UnknownBackendError,
    UnrecognizedModelError,
)
from rfest._protocol import GradientProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "ProviderFactory",
    "available_backends",
    "detect_backend",
    "load_backend",
    "make_provider",
    "register_backend",
]

ENTRY_POINT_GROUP = "rfest.backends"

ProviderFactory = Callable[..., GradientProvider]


@dataclass(frozen=True)
class _KnownBackend:
    """A backend rfest ships: the framework it needs and the extra that installs it."""

    framework: str
    module: str
    extra: str
    model_roots: tuple[str, ...]


_KNOWN: Mapping[str, _KnownBackend] = {
    "jax": _KnownBackend("JAX and Flax", "jax", "jax", ("flax",)),
    "keras": _KnownBackend("Keras 3", "keras", "keras", ("keras", "tf_keras")),
    "torch": _KnownBackend("PyTorch", "torch", "torch", ("torch",)),
}

_factories: dict[str, ProviderFactory] = {}
_lock = threading.Lock()


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _framework_installed(name: str) -> bool:
    known = _KNOWN.get(name)
    return known is None or importlib.util.find_spec(known.module) is not None


def available_backends() -> list[str]:
    """Names of the backends usable here, without importing any framework.

    Example:
        >>> import rfest
        >>> isinstance(rfest.available_backends(), list)
        True
    """
    names = {n for n in _entry_points() if _framework_installed(n)} | set(_factories)
    return sorted(names)


def register_backend(name: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Register a provider factory at run time (tests, notebooks), beside entry points.

    Example:
        >>> import rfest
        >>> rfest.register_backend("doc-example", lambda model, **options: model, replace=True)
        >>> "doc-example" in rfest.available_backends()
        True
    """
    with _lock:
        if name in _factories and not replace:
            raise ValueError(f"backend {name!r} is already registered; pass replace=True")
        _factories[name] = factory


def load_backend(name: str) -> ProviderFactory:
    """The provider factory of backend ``name``, importing its entry point on first use."""
    with _lock:
        if name in _factories:
            return _factories[name]
    points = _entry_points()
    if name not in points:
        raise _unknown(name, points)
    try:
        factory = points[name].load()
    except ImportError as exc:
        if name in _KNOWN and not _framework_installed(name):
            raise _not_installed(name, exc) from exc
        raise BackendLoadError(
            f"the rfest backend plugin {name!r} ({points[name].value}) failed to import: "
            f"{exc}. Other backends still work; install what it needs, or remove the package "
            f"that provides it"
        ) from exc
    except Exception as exc:
        raise BackendLoadError(
            f"the rfest backend plugin {name!r} ({points[name].value}) failed to load: "
            f"{type(exc).__name__}: {exc}. Other backends still work; reinstall or remove "
            f"the package that provides it"
        ) from exc
    if not callable(factory):
        raise BackendLoadError(
            f"the rfest backend plugin {name!r} ({points[name].value}) is a "
            f"{type(factory).__name__}, not a factory; its entry point must name a callable "
            f"factory(model, **options) returning a GradientProvider"
        )
    with _lock:
        _factories.setdefault(name, factory)
        return _factories[name]


def make_provider(name: str, model: Any, **options: Any) -> GradientProvider:
    """Build backend ``name``'s provider for ``model`` and check it keeps the protocol."""
    factory = load_backend(name)
    try:
        provider: object = factory(model, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise OptionError(
            f"the {name!r} backend does not take that option ({exc}); rfest.compute takes "
            f"input_shape, backend, output, dtype, linearize, max_input_size, and passes "
            f"other keywords to the backend: see its documentation for the ones it knows"
        ) from exc
    if not isinstance(provider, GradientProvider):
        missing = [
            member
            for member in ("spatial_shape", "output_names", "output_shapes", "gradient_maps")
            if not hasattr(provider, member)
        ]
        raise BackendLoadError(
            f"the rfest backend {name!r} returned a {type(provider).__name__}, which is not a "
            f"GradientProvider (missing: {', '.join(missing)}); the plugin is broken, other "
            f"backends still work"
        )
    return provider


def detect_backend(model: Any) -> str:
    """Backend name for ``model``, from the modules that define its type.

    Example:
        >>> detect_backend(object())
        Traceback (most recent call last):
        ...
        rfest._errors.UnrecognizedModelError: ...
    """
    candidates = _entry_points().keys() | _factories.keys()
    if isinstance(model, tuple) and len(model) == 2:  # a Flax Linen (module, variables) pair
        model = model[0]
    for cls in type(model).__mro__:
        root = cls.__module__.partition(".")[0]
        for name, known in _KNOWN.items():
            if root in known.model_roots:
                return name
        if root in candidates and root != "builtins":
            return root
    installed = ", ".join(available_backends()) or "none"
    if isinstance(model, type):
        raise UnrecognizedModelError(
            f"you passed the class {model.__qualname__}, not a model; pass an instance, "
            f"e.g. {model.__qualname__}(...)"
        )
    if callable(model):
        raise UnrecognizedModelError(
            f"a plain callable ({type(model).__name__}) could belong to any framework; "
            f"pass backend=... to say which (installed: {installed})"
        )
    raise UnrecognizedModelError(
        f"no rfest backend recognises a model of type {type(model).__module__}."
        f"{type(model).__qualname__}; expected a torch.nn.Module, a Keras model, a Flax "
        f"module (or Linen (module, variables) pair). Installed backends: "
        f"{installed}. Pass backend=... or install the extra for your framework, e.g. "
        f"pip install 'rfest[torch]'"
    )


def _unknown(name: str, points: Mapping[str, EntryPoint]) -> RFEstError:
    if name in _KNOWN:
        return _not_installed(name, None)
    installed = available_backends()
    close = difflib.get_close_matches(name, [*points, *_factories, *_KNOWN], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownBackendError(
        f"no rfest backend is named {name!r}; installed: {', '.join(installed) or 'none'}."
        f"{hint} A third-party backend registers a factory under the entry-point group "
        f"{ENTRY_POINT_GROUP!r}"
    )


def _not_installed(name: str, exc: ImportError | None) -> RFEstError:
    known = _KNOWN[name]
    reason = str(exc) if exc else f"no module named {known.module!r}"
    return BackendNotInstalledError(
        f"the rfest backend {name!r} needs {known.framework}, which is not installed "
        f"({reason}); install it with: pip install 'rfest[{known.extra}]'"
    )
