"""The three model forms the JAX backend accepts, each seen as ``run(params, x) -> {name: value}``.

- a plain function ``f(x)``: its output, and the leaves of a pytree output by key/index;
- a Flax Linen ``(module, variables)`` pair: module outputs as ``capture_intermediates``
  records them and values stored with ``self.sow('intermediates', ...)``;
- a Flax NNX module: module outputs and sown ``nnx.Intermediate`` values, as
  ``nnx.capture`` records them.

Names are module paths joined with ``/`` (``"backbone/conv3"``, ``"layers/0"``); a
method other than ``__call__`` adds its name. ``params`` is a pytree passed to ``run`` as
an argument, so a linearized pass substitutes it without touching the user's arrays: the
NNX module is split, and merged into a fresh copy inside ``run``; Linen is functional.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfest import UnrecognizedModelError

__all__ = ["MODEL_KEY", "MODEL_OUTPUT", "Model", "as_model"]

MODEL_KEY = ""
"""Key of the model's own output among the named values a run returns: no module path or
pytree path is empty, so a module named ``"output"`` keeps its own entry."""

MODEL_OUTPUT = "output"
"""Name under which the model's own output is reported when ``output=None``."""

_Run = Callable[[Any, Any], dict[str, Any]]


@dataclass(frozen=True)
class Model:
    """A model form reduced to a pure function of (params, input)."""

    kind: str
    params: Any
    linearized_params: Any
    run: _Run
    list_paths: Callable[[], tuple[str, ...]] = field(default=tuple)
    owner: Any = None  # the Flax module whose traces providers may share (see _shared)
    structure: Any = None  # what besides params and owner fixes the trace (NNX graphdef)

    @property
    def module_paths(self) -> tuple[str, ...]:
        """Module paths in definition order (listed on demand: slow for large NNX models)."""
        return self.list_paths()


def as_model(model: Any, call_kwargs: Mapping[str, Any]) -> Model:
    """Recognise ``model`` as a plain function, a Linen pair or an NNX module.

    A :class:`Model` is taken as it is: another backend (Keras on JAX) built it.
    """
    if isinstance(model, Model):
        return model
    linen = sys.modules.get("flax.linen")
    nnx = sys.modules.get("flax.nnx")
    if (
        isinstance(model, tuple)
        and len(model) == 2
        and linen
        and isinstance(model[0], linen.Module)
    ):
        return _linen(model[0], model[1], call_kwargs)
    if linen is not None and isinstance(model, linen.Module):
        raise UnrecognizedModelError(
            f"a Flax Linen module ({type(model).__name__}) holds no weights; pass it with its "
            f"variables as a pair: rfest.compute((module, variables), ...), where variables "
            f"= module.init(key, x)"
        )
    if nnx is not None and isinstance(model, nnx.Module):
        return _nnx(model, call_kwargs)
    if callable(model) and not isinstance(model, type):
        return _function(model, call_kwargs)
    raise UnrecognizedModelError(
        f"the jax backend takes a function f(x), a Flax NNX module, or a Flax Linen "
        f"(module, variables) pair; got {type(model).__module__}.{type(model).__qualname__}"
    )


def _function(fn: Callable[..., Any], call_kwargs: Mapping[str, Any]) -> Model:
    def run(params: Any, x: Any) -> dict[str, Any]:
        return _with_output_leaves({}, fn(x, **call_kwargs))

    owner, structure = None, None
    if isinstance(fn, types.FunctionType):  # traced once per shape, as jax.jit does
        cells = tuple(id(c.cell_contents) for c in fn.__closure__ or () if _filled(c))
        owner, structure = fn, (fn.__code__, cells)
    return Model("function", (), (), run, owner=owner, structure=structure)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _linen(module: Any, variables: Any, call_kwargs: Mapping[str, Any]) -> Model:
    if not isinstance(variables, Mapping):
        raise UnrecognizedModelError(
            f"the second element of a Linen (module, variables) pair must be the variables "
            f"dict from module.init(...); got {type(variables).__name__}"
        )
    kept = {k: v for k, v in variables.items() if k != "intermediates"}

    def run(params: Any, x: Any) -> dict[str, Any]:
        out, state = module.apply(
            params,
            x,
            capture_intermediates=True,
            mutable=True,
            rngs={"dropout": jax.random.key(0)},
            **call_kwargs,
        )
        named = dict(_captured(state.get("intermediates", {})))
        return _with_output_leaves(named, out)

    linearized = {
        name: _positive_params(tree) if name == "params" else tree for name, tree in kept.items()
    }
    return Model("linen", kept, linearized, run, owner=module)


def _nnx(module: Any, call_kwargs: Mapping[str, Any]) -> Model:
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]

    def run(state: Any, x: Any) -> dict[str, Any]:
        copy = nnx.merge(graphdef, *state)
        forward: Any = nnx.capture(copy, nnx.Intermediate, method_outputs=nnx.Intermediate)
        out, intermediates = forward(x, **call_kwargs)
        named = dict(_captured(nnx.to_pure_dict(intermediates)))
        return _with_output_leaves(named, out)

    def paths() -> tuple[str, ...]:
        return tuple("/".join(str(k) for k in p) for p, _ in nnx.iter_modules(module) if p)

    linearized = (_positive_params(params), rest)
    return Model("nnx", (params, rest), linearized, run, paths, owner=module, structure=graphdef)


def _captured(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(name, value of the first call)`` for each recorded output in a nested mapping."""
    for key, value in tree.items():
        keys = (*prefix, str(key))
        if isinstance(value, Mapping):
            yield from _captured(value, keys)
        elif isinstance(value, tuple) and value:
            path = keys[:-1] if keys[-1] == "__call__" else keys
            if path:
                yield "/".join(path), value[0]


def _with_output_leaves(named: dict[str, Any], out: Any) -> dict[str, Any]:
    result = {MODEL_KEY: out}
    if not _is_array(out):
        for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
            result.setdefault("/".join(_key_name(k) for k in path), leaf)
    for name, value in named.items():
        result.setdefault(name, value)
    return result


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _positive_params(tree: Any) -> Any:
    """Weights ``1 / fan_in`` (Flax kernels are ``(*window, in, out)``), biases 0, else 1."""

    def positive(path: Any, leaf: Any) -> Any:
        if not _is_array(leaf) or not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        names = [_key_name(k) for k in path]
        # numpy, not jnp.full: JAX would compile one XLA program per distinct shape.
        if "bias" in names[-2:]:
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = 1
        for size in leaf.shape[:-1]:
            fan_in *= int(size)
        return np.full(leaf.shape, 1.0 / fan_in, leaf.dtype)

    return jax.tree_util.tree_map_with_path(positive, tree)
