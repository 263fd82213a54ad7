"""Traces, compiled programs and linearized parameters shared by providers of one model.

``rfest.compute`` builds a new provider per call (two with the float32 scout); tracing a
Flax model and compiling its programs cost far more than running them narrowed, so they
are kept per model object, held weakly: an entry goes when the model does, and at most
``_LIMIT`` models are kept. The key holds everything a traced program depends on besides
the model object: the parameter tree's structure, shapes and dtypes (values enter as
arguments), the NNX graph definition, the call's keyword arguments and the x64 setting.
A plain function is keyed like ``jax.jit`` keys it, by identity (and by what its closure
cells hold): like a jitted function, it is assumed to read no global state that changes.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

__all__ = ["Shared", "shared_for"]

_LIMIT = 8


@dataclass
class Shared:
    """What providers of one model share: traces by input shape, parameters by dtype."""

    traces: dict[tuple[int, ...], Any] = field(default_factory=dict)
    params: dict[str, list[Any]] = field(default_factory=dict)


_entries: OrderedDict[Hashable, tuple[weakref.ref[Any], Shared]] = OrderedDict()
_lock = threading.RLock()  # re-entered when a collected model's entry is forgotten


def shared_for(
    owner: Any, params: Any, structure: Hashable, call_kwargs: Mapping[str, Any]
) -> Shared:
    """The shared entry of ``owner`` (a Flax module), or a private one if it cannot be keyed."""
    try:
        leaves, treedef = jax.tree.flatten(params)
        avals = tuple(
            (tuple(leaf.shape), str(leaf.dtype)) if hasattr(leaf, "shape") else repr(leaf)
            for leaf in leaves
        )
        key = (
            id(owner),
            type(owner),
            treedef,
            avals,
            structure,
            tuple(sorted(call_kwargs.items())),
            str(jax.dtypes.canonicalize_dtype(np.float64)),  # the x64 setting
        )
        hash(key)
        weakref.ref(owner)
    except TypeError:  # unhashable keyword arguments, or an owner without weak references
        return Shared()
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0]() is owner:
            _entries.move_to_end(key)
            return entry[1]
        shared = Shared()

        def forget(_: Any) -> None:
            with _lock:
                _entries.pop(key, None)

        _entries[key] = (weakref.ref(owner, forget), shared)
        while len(_entries) > _LIMIT:
            _entries.popitem(last=False)
        return shared
