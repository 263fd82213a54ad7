"""Keras global state that building a float64 copy touches, set and then restored.

Keras keeps ``floatx`` and the default dtype policy in (thread-local) global state;
layers created while a copy is built read them. :func:`float_policy` sets both for
the duration of a ``with`` block and puts back exactly what was there, including
"never set" (reading ``keras.config.dtype_policy()`` would store a default).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras
from keras.src.backend.common import global_state

__all__ = ["float_policy"]

_UNSET = object()


@contextmanager
def float_policy(dtype: str) -> Iterator[None]:
    """Build layers in ``dtype`` inside the block; leave floatx and the policy as found.

    Example:
        >>> import keras
        >>> before = keras.config.floatx()
        >>> with float_policy("float64"):
        ...     keras.layers.Dense(2).dtype_policy.name
        'float64'
        >>> keras.config.floatx() == before
        True
    """
    floatx = keras.config.floatx()
    policy = global_state.get_global_attribute("dtype_policy", _UNSET)
    try:
        keras.config.set_floatx(dtype)
        keras.config.set_dtype_policy(dtype)
        yield
    finally:
        keras.config.set_floatx(floatx)
        if policy is _UNSET:
            global_state.set_global_attribute("dtype_policy", None)
        else:
            global_state.set_global_attribute("dtype_policy", policy)
