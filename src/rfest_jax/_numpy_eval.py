"""Run a small traced program (a jaxpr) in numpy, with no XLA compilation.

Narrowed, the pullback of a linearized network is a chain of one-channel windowed sums,
products with constants and residual sums: computing it takes milliseconds, while XLA
takes about 20 ms per kernel to compile it, for every new probe shape (a second for a
ResNet-50), and JAX's eager mode compiles every operation per shape too. So such
programs run here, one numpy call per equation, when every primitive in them is one of
:data:`_RULES`; :func:`numpy_program` returns None otherwise and the caller compiles.
Each rule follows the primitive's ``jax.lax`` semantics; every result is checked against
the shape the trace recorded (a mismatch raises :class:`Unsupported`, and the caller
compiles instead) and cast to the recorded dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, Primitive, Var

__all__ = ["NumpyProgram", "Unsupported", "numpy_program"]

_CALLS = ("jit", "pjit")  # nested programs held as a ClosedJaxpr in params["jaxpr"]


class Unsupported(Exception):
    """The program holds something these rules do not compute: compile it instead."""


class NumpyProgram:
    """``program(*args)``: the outputs of a jaxpr, computed in numpy."""

    def __init__(self, closed: ClosedJaxpr) -> None:
        jaxpr = closed.jaxpr
        # Only what the outputs need: a pullback's trace holds its whole forward pass.
        needed = {v for v in jaxpr.outvars if isinstance(v, Var)}
        keep = []
        for eqn in reversed(jaxpr.eqns):
            if any(v in needed for v in eqn.outvars):
                keep.append(eqn)
                needed.update(v for v in eqn.invars if isinstance(v, Var))
        eqns = _accumulated_pads(_folded_pads(keep[::-1], jaxpr.outvars), jaxpr.outvars)
        self._jaxpr: Jaxpr = jaxpr.replace(eqns=eqns)
        self._consts = list(closed.consts)  # converted in _run, where used

    @property
    def jaxpr(self) -> Jaxpr:
        return self._jaxpr

    def __call__(self, *args: Any) -> list[np.ndarray]:
        with np.errstate(all="ignore"):  # as XLA: overflow gives inf, 0/0 nan, silently
            return _run(self._jaxpr, self._consts, list(args))


def numpy_program(closed: ClosedJaxpr) -> NumpyProgram | None:
    """``closed`` as a numpy program, or None when it uses a primitive without a rule."""
    program = NumpyProgram(closed)
    return program if _supported(program.jaxpr) else None


def _supported(jaxpr: Jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _CALLS:
            if not _supported(eqn.params["jaxpr"].jaxpr):
                return False
        elif name not in _RULES:
            return False
    return True


def _folded_pads(eqns: list[Any], outvars: Sequence[Any]) -> list[Any]:
    """``eqns`` with each zero ``pad`` read only by a ``reduce_window_sum`` folded into it.

    A transposed convolution's pullback pads (edges and, for a stride, between entries)
    and then sums windows; the window sum reads the padding without writing it out
    (:func:`_reduce_window_sum`), so the padded array is never built.
    """
    pads = _zero_pads_read_once(eqns, outvars)
    folded: set[int] = set()
    out = []
    for eqn in eqns:
        if eqn.primitive.name == "reduce_window_sum" and eqn.invars[0] in pads:
            pad = pads[eqn.invars[0]]
            params = _window_of_padded(pad.params["padding_config"], eqn.params)
            if params is not None:
                eqn = eqn.replace(invars=[pad.invars[0]], params=params)
                folded.add(id(pad))
        out.append(eqn)
    return [eqn for eqn in out if id(eqn) not in folded]


_ADD_PADDED = Primitive("rfest_add_padded")


def _accumulated_pads(eqns: list[Any], outvars: Sequence[Any]) -> list[Any]:
    """``eqns`` with each ``add_any(a, pad(y, 0))`` (the pad read only there, no interior
    and no crop) as one addition of ``y`` into the padded region of ``a``, in place where
    ``a`` is such a sum itself, read only there.

    The pullback of a Python loop over an axis (Keras' ``TimeDistributed`` at a known
    length) pads each step's gradient to the full length and sums them: quadratic in the
    steps (1024 steps: a minute), linear this way."""
    uses = _uses(eqns, outvars)
    pads = {
        var: eqn
        for var, eqn in _zero_pads_read_once(eqns, outvars).items()
        if all(
            lo >= 0 and hi >= 0 and not interior
            for lo, hi, interior in eqn.params["padding_config"]
        )
    }
    sums: set[Any] = set()
    folded: set[int] = set()
    out = []
    for eqn in eqns:
        if eqn.primitive.name == "add_any":
            a, b = eqn.invars
            if b not in pads and a in pads:
                a, b = b, a
            if b in pads and isinstance(a, Var):
                pad = pads[b]
                eqn = eqn.replace(
                    primitive=_ADD_PADDED,
                    invars=[a, pad.invars[0]],
                    params={
                        "padding_config": pad.params["padding_config"],
                        "in_place": a in sums and uses[a] == 1,
                    },
                )
                folded.add(id(pad))
                sums.add(eqn.outvars[0])
        out.append(eqn)
    return [eqn for eqn in out if id(eqn) not in folded]


def _zero_pads_read_once(eqns: list[Any], outvars: Sequence[Any]) -> dict[Var, Any]:
    """Each ``pad`` with zeros whose result one equation reads, by that result."""
    uses = _uses(eqns, outvars)
    return {
        eqn.outvars[0]: eqn
        for eqn in eqns
        if eqn.primitive.name == "pad" and _is_zero(eqn.invars[1]) and uses[eqn.outvars[0]] == 1
    }


def _uses(eqns: list[Any], outvars: Sequence[Any]) -> dict[Var, int]:
    uses: dict[Var, int] = {}
    for v in [*(v for eqn in eqns for v in eqn.invars), *outvars]:
        if isinstance(v, Var):
            uses[v] = uses.get(v, 0) + 1
    return uses


def _add_padded(
    a: np.ndarray,
    y: np.ndarray,
    *,
    padding_config: Sequence[tuple[int, int, int]],
    in_place: bool,
) -> np.ndarray:
    out = a if in_place else np.array(a)
    out[
        tuple(slice(lo, lo + n) for n, (lo, _, _) in zip(y.shape, padding_config, strict=True))
    ] += y
    return out


def _is_zero(atom: Any) -> bool:
    return isinstance(atom, Literal) and np.ndim(atom.val) == 0 and atom.val == 0


def _window_of_padded(
    config: Sequence[tuple[int, int, int]], params: dict[str, Any]
) -> dict[str, Any] | None:
    """The window sum of ``pad(x, 0, config)`` as a window sum of ``x``; None if that needs
    a stride and a base dilation on one axis (which :func:`_taps` does not compute).

    ``pad`` spreads entries ``interior + 1`` apart, then adds ``lo``/``hi`` (cropping when
    negative); a window sum dilates its operand by ``base_dilation``, then pads: the same
    two steps, so with no base dilation of its own they add up (but a crop followed by
    padding on the same side).
    """
    padding, base = [], []
    for (lo, hi, interior), (plo, phi), b, s in zip(
        config, params["padding"], params["base_dilation"], params["window_strides"], strict=True
    ):
        if (lo, hi, interior) != (0, 0, 0) and (b != 1 or (interior and s != 1)):
            return None
        if (lo < 0 < plo) or (hi < 0 < phi):
            return None  # cropped, then padded: not one padding
        padding.append((lo + plo, hi + phi))
        base.append(b * (interior + 1))
    return {**params, "padding": tuple(padding), "base_dilation": tuple(base)}


def _run(jaxpr: Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[np.ndarray]:
    last_use: dict[Var, int] = {}
    for index, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, Var):
                last_use[v] = index
    env: dict[Var, Any] = {}
    kept = {v for v in jaxpr.outvars if isinstance(v, Var)}
    for var, value in zip([*jaxpr.constvars, *jaxpr.invars], [*consts, *args], strict=True):
        if var in last_use or var in kept:
            env[var] = np.asarray(value)

    def read(v: Any) -> Any:
        if isinstance(v, Literal):
            aval: Any = v.aval
            return np.asarray(v.val, dtype=aval.dtype)
        return env[v]

    for index, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CALLS:
            sub = eqn.params["jaxpr"]
            outs = _run(sub.jaxpr, [np.asarray(c) for c in sub.consts], invals)
        else:
            out = _RULES[name](*invals, **eqn.params)
            outs = list(out) if eqn.primitive.multiple_results else [out]
        for var, value in zip(eqn.outvars, outs, strict=True):
            array = np.asarray(value)
            aval: Any = var.aval
            if array.shape != tuple(aval.shape):
                raise Unsupported(f"{name}: shape {array.shape}, traced {aval.shape}")
            env[var] = array.astype(aval.dtype, copy=False)
        for v in eqn.invars:
            if isinstance(v, Var) and last_use.get(v) == index and v not in kept:
                env.pop(v, None)
    return [read(v) for v in jaxpr.outvars]


def _broadcast_in_dim(
    x: np.ndarray, *, shape: Sequence[int], broadcast_dimensions: Sequence[int], **_: Any
) -> np.ndarray:
    expanded = [1] * len(shape)
    for axis, dim in enumerate(broadcast_dimensions):
        expanded[dim] = x.shape[axis]
    return np.broadcast_to(x.reshape(expanded), tuple(shape))


def _reshape(x: np.ndarray, *, new_sizes: Sequence[int], dimensions: Any, **_: Any) -> Any:
    if dimensions is not None:
        raise Unsupported("reshape with dimensions")
    return x.reshape(tuple(new_sizes))


def _pad(
    x: np.ndarray, value: np.ndarray, *, padding_config: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    for axis, (_, _, interior) in enumerate(padding_config):
        n = x.shape[axis]
        if interior and n > 1:
            shape = list(x.shape)
            shape[axis] = n + (n - 1) * interior
            spread = np.full(shape, value, dtype=x.dtype)
            index = [slice(None)] * x.ndim
            index[axis] = slice(None, None, interior + 1)
            spread[tuple(index)] = x
            x = spread
    cut = tuple(
        slice(max(-lo, 0), n - max(-hi, 0))
        for n, (lo, hi, _) in zip(x.shape, padding_config, strict=True)
    )
    x = x[cut]
    if all(lo <= 0 and hi <= 0 for lo, hi, _ in padding_config):
        return x
    pads = [(max(lo, 0), max(hi, 0)) for lo, hi, _ in padding_config]
    shape = [n + lo + hi for n, (lo, hi) in zip(x.shape, pads, strict=True)]
    out = np.zeros(shape, x.dtype) if not value else np.full(shape, value, x.dtype)
    out[tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape, pads, strict=True))] = x
    return out


def _reduce_window_sum(
    x: np.ndarray,
    *,
    window_dimensions: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    base_dilation: Sequence[int],
    window_dilation: Sequence[int],
) -> np.ndarray:
    # A window sum is separable: one axis at a time, each tap added where it lands, so
    # neither the zero padding nor the zeros of a base dilation (the pullback of a strided
    # convolution) are ever written out.
    for axis, (w, s, (lo, hi), b, d) in enumerate(
        zip(window_dimensions, window_strides, padding, base_dilation, window_dilation, strict=True)
    ):
        if w == 1 and s == 1 and lo == 0 and hi == 0 and b == 1:
            continue
        n = x.shape[axis]
        count = max(((n - 1) * b + 1 + lo + hi - (w - 1) * d - 1) // s + 1, 0)
        shape = list(x.shape)
        shape[axis] = count
        # output i reads the dilated input at i * s + k * d - lo
        taps = [t for k in range(w) if (t := _taps(n, count, s, b, k * d - lo)) is not None]
        first = next((t for t in taps if t[0][2] == 1), None)
        if first is None:
            out = np.zeros(shape, dtype=x.dtype)
        else:  # the first solid tap is copied, not added to zeros: one pass less
            taps.remove(first)
            out = np.empty(shape, dtype=x.dtype)
            (i0, i1, _), (j0, j1, j_step) = first
            out[_along(axis, x.ndim, slice(None, i0))] = 0
            out[_along(axis, x.ndim, slice(i1, None))] = 0
            out[_along(axis, x.ndim, slice(i0, i1))] = x[
                _along(axis, x.ndim, slice(j0, j1, j_step))
            ]
        for (i0, i1, i_step), (j0, j1, j_step) in taps:
            target = _along(axis, x.ndim, slice(i0, i1, i_step))
            np.add(out[target], x[_along(axis, x.ndim, slice(j0, j1, j_step))], out=out[target])
        x = out
    return x


def _along(axis: int, ndim: int, index: slice) -> tuple[slice, ...]:
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


def _taps(
    n: int, count: int, s: int, b: int, offset: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Outputs ``i`` and inputs ``j`` with ``i * s + offset == j * b``, as two slices."""
    if b == 1:  # j = i * s + offset, 0 <= j < n
        i_min = max(0, _ceil_div(-offset, s))
        i_max = min(count - 1, (n - 1 - offset) // s)
        if i_min > i_max:
            return None
        j0 = i_min * s + offset
        return (i_min, i_max + 1, 1), (j0, i_max * s + offset + 1, s)
    if s == 1:  # i = j * b - offset, 0 <= i < count
        j_min = max(0, _ceil_div(offset, b))
        j_max = min(n - 1, (count - 1 + offset) // b)
        if j_min > j_max:
            return None
        return (j_min * b - offset, j_max * b - offset + 1, b), (j_min, j_max + 1, 1)
    raise Unsupported("a window sum with both a stride and a base dilation")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _compact(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` without the axes it is broadcast along (kept at length one), and its shape."""
    index = tuple(
        slice(0, 1) if stride == 0 and n > 1 else slice(None)
        for stride, n in zip(x.strides, x.shape, strict=True)
    )
    return x[index], x.shape


def _elementwise(function: Callable[[Any], Any]) -> Callable[..., Any]:
    def apply(x: np.ndarray, **_: Any) -> Any:
        base, shape = _compact(x)
        return np.broadcast_to(function(base), shape)

    return apply


def _reduce_sum(x: np.ndarray, *, axes: Sequence[int], **_: Any) -> Any:
    base, shape = _compact(x)
    scale = math.prod(shape[a] for a in axes if base.shape[a] != shape[a])
    total = np.sum(base, axis=tuple(axes))
    return total * scale if scale != 1 else total


def _dot_general(
    lhs: np.ndarray,
    rhs: np.ndarray,
    *,
    dimension_numbers: Any,
    preferred_element_type: Any = None,
    **_: Any,
) -> Any:
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    lhs_sub = [next(letters) for _ in range(lhs.ndim)]
    rhs_sub: list[str | None] = [None] * rhs.ndim
    for a, b in zip(lc, rc, strict=True):
        rhs_sub[b] = lhs_sub[a]
    for a, b in zip(lb, rb, strict=True):
        rhs_sub[b] = lhs_sub[a]
    rhs_letters = [s if s is not None else next(letters) for s in rhs_sub]
    batch = [lhs_sub[a] for a in lb]
    lhs_free = [s for a, s in enumerate(lhs_sub) if a not in lc and a not in lb]
    rhs_free = [s for b, s in enumerate(rhs_letters) if b not in rc and b not in rb]
    spec = f"{''.join(lhs_sub)},{''.join(rhs_letters)}->{''.join(batch + lhs_free + rhs_free)}"
    dtype = preferred_element_type or np.result_type(lhs, rhs)
    return np.einsum(spec, lhs.astype(dtype), rhs.astype(dtype))


def _iota(*, dtype: Any, shape: Sequence[int], dimension: int, **_: Any) -> np.ndarray:
    line = np.arange(shape[dimension], dtype=dtype)
    expanded = [1] * len(shape)
    expanded[dimension] = shape[dimension]
    return np.broadcast_to(line.reshape(expanded), tuple(shape))


def _select_n(which: np.ndarray, *cases: np.ndarray) -> np.ndarray:
    out = cases[0]
    for k, case in enumerate(cases[1:], start=1):
        out = np.where(which == k if which.dtype != np.bool_ else which, case, out)
    return out


def _div(a: np.ndarray, b: np.ndarray) -> Any:
    if np.issubdtype(np.result_type(a, b), np.integer):
        raise Unsupported("integer division")  # lax rounds towards zero
    return np.divide(a, b)


def _slice(
    x: np.ndarray,
    *,
    start_indices: Sequence[int],
    limit_indices: Sequence[int],
    strides: Sequence[int] | None,
) -> np.ndarray:
    steps = strides or (1,) * x.ndim
    return x[
        tuple(slice(a, b, s) for a, b, s in zip(start_indices, limit_indices, steps, strict=True))
    ]


def _split(x: np.ndarray, *, sizes: Sequence[int], axis: int) -> list[np.ndarray]:
    return np.split(x, list(itertools.accumulate(sizes))[:-1], axis=axis)


def _cumsum(x: np.ndarray, *, axis: int, reverse: bool) -> np.ndarray:
    if reverse:
        return np.flip(np.cumsum(np.flip(x, axis), axis=axis), axis)
    return np.cumsum(x, axis=axis)


def _unary(function: Callable[[Any], Any]) -> Callable[..., Any]:
    return lambda x, **_: function(x)


def _binary(function: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    return lambda a, b, **_: function(a, b)


_RULES: dict[str, Callable[..., Any]] = {
    "abs": _elementwise(np.abs),
    "neg": _unary(np.negative),
    "sign": _unary(np.sign),
    "exp": _unary(np.exp),
    "log": _unary(np.log),
    "sqrt": _unary(np.sqrt),
    "is_finite": _unary(np.isfinite),
    "not": _unary(np.invert),
    "copy": _unary(np.array),
    "copy_p": _unary(np.array),
    "stop_gradient": _unary(lambda x: x),
    "integer_pow": lambda x, *, y: np.power(x, y),
    "add": _binary(np.add),
    "add_any": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "div": _div,
    "max": _binary(np.maximum),
    "min": _binary(np.minimum),
    "and": _binary(np.bitwise_and),
    "or": _binary(np.bitwise_or),
    "eq": _binary(np.equal),
    "ne": _binary(np.not_equal),
    "ge": _binary(np.greater_equal),
    "gt": _binary(np.greater),
    "le": _binary(np.less_equal),
    "lt": _binary(np.less),
    "convert_element_type": lambda x, *, new_dtype, **_: x.astype(new_dtype),
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "squeeze": lambda x, *, dimensions: np.squeeze(x, axis=tuple(dimensions)),
    "expand_dims": lambda x, *, dimensions: np.expand_dims(x, tuple(dimensions)),
    "transpose": lambda x, *, permutation: np.transpose(x, permutation),
    "rev": lambda x, *, dimensions: np.flip(x, tuple(dimensions)),
    "reduce_sum": _reduce_sum,
    "reduce_max": lambda x, *, axes, **_: np.max(x, axis=tuple(axes)),
    "reduce_min": lambda x, *, axes, **_: np.min(x, axis=tuple(axes)),
    "pad": _pad,
    "reduce_window_sum": _reduce_window_sum,
    "dot_general": _dot_general,
    "iota": _iota,
    "select_n": _select_n,
    "slice": _slice,
    "split": _split,
    "concatenate": lambda *xs, dimension: np.concatenate(xs, axis=dimension),
    # a Python loop over an axis (Keras' TimeDistributed at a known length) and its pullback
    "unstack": lambda x, *, axis: [np.take(x, i, axis=axis) for i in range(x.shape[axis])],
    "stack": lambda *xs, axis: np.stack(xs, axis=axis),
    _ADD_PADDED.name: _add_padded,
    "cumsum": _cumsum,
    "clamp": lambda lo, x, hi: np.clip(x, lo, hi),
}
