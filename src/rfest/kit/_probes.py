"""Probe inputs and the cache of output shapes per probe size."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["ShapeCache", "probe_input"]


def probe_input(shape: tuple[int, ...], *, linearize: bool, dtype: str = "float64") -> np.ndarray:
    """The input of every probe: ones on a linearized model (any positive input gives the
    same support), else a fixed positive random input in ``[0.5, 1.5)`` (seed 0), away
    from the kinks of ReLU-like activations.

    Example:
        >>> probe_input((1, 2), linearize=True)
        array([[1., 1.]])
        >>> bool((probe_input((4, 4), linearize=False) >= 0.5).all())
        True
    """
    if linearize:
        return np.ones(shape, dtype=dtype)
    return (0.5 + np.random.default_rng(0).random(shape)).astype(dtype)


class ShapeCache:
    """Output shapes per probe size: ``get(spatial, compute)`` runs ``compute`` once per
    size, also when threads ask at once.

    Example:
        >>> cache = ShapeCache()
        >>> runs = []
        >>> shapes = lambda: runs.append(1) or {"conv": (6, 6)}
        >>> cache.get((8, 8), shapes) == cache.get((8, 8), shapes) == {"conv": (6, 6)}
        True
        >>> len(runs)
        1
    """

    def __init__(self) -> None:
        self._shapes: dict[tuple[int, ...], Mapping[str, tuple[int, ...]]] = {}
        self._lock = threading.RLock()

    def get(
        self,
        spatial_shape: tuple[int, ...],
        compute: Callable[[], Mapping[str, tuple[int, ...]]],
    ) -> Mapping[str, tuple[int, ...]]:
        """The shapes at ``spatial_shape``, from ``compute()`` the first time."""
        key = tuple(int(s) for s in spatial_shape)
        with self._lock:
            if key not in self._shapes:
                self._shapes[key] = dict(compute())
            return self._shapes[key]
