"""Evaluate a traced JAX program (a jaxpr), optionally as its linearized counterpart.

Any code written with ``jax.numpy``, ``jax.nn``, ``jax.lax`` or Flax lowers to the same few
primitives, so rewriting primitives covers plain functions and Flax modules alike; no layer
list is needed. Each value carries two flags: *live* (it depends on the model input) and
*stat* (it is a statistic: a reduction of live values, e.g. a mean or a variance).
Primitives with no live operand run unchanged. With ``linearize=True``, on live operands:

- pointwise nonlinearities (``tanh``, ``logistic``, ``erf``, ``exp``, ``integer_pow``...)
  act as identity; ``max``/``min``/``select_n`` (ReLU, ``where``) as the mean of their live
  operands; ``clamp`` as identity;
- ``reduce_max``/``reduce_min`` act as the mean, ``reduce_window_max``/``_min`` as the
  windowed mean of the same geometry, ``cummax``-style scans as ``cumsum``;
- normalisation acts as identity: subtracting a statistic (centering) is dropped and
  ``rsqrt``/``sqrt`` of a statistic becomes the constant one; dividing by a live value
  keeps the numerator;
- an input-independent kernel of ``conv_general_dilated`` or operand of ``dot_general``
  becomes the positive constant ``1 / fan_in``; adding, subtracting or multiplying by an
  input-independent value leaves the live operand (biases zero, scales one); ``sub`` of two
  live values adds them, so no two paths cancel;
- ``stop_gradient`` makes its result input-independent.

Calls (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``, ``remat``) are
entered and rewritten too; control flow (``scan``, ``while``, ``cond``) runs unchanged.
Floating-point values are computed in the requested dtype throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, Var

__all__ = ["Value", "evaluate", "needed_equations"]

_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}

_POINTWISE = frozenset(
    {
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "tanh",
        "logistic",
        "erf",
        "erfc",
        "erf_inv",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "abs",
        "sign",
        "neg",
        "integer_pow",
        "square",
        "cbrt",
        "floor",
        "ceil",
        "round",
        "lgamma",
        "digamma",
        "reduce_precision",
        "sqrt",
        "rsqrt",
    }
)
_KEEPS_STAT = frozenset(
    {
        "broadcast_in_dim",
        "reshape",
        "squeeze",
        "expand_dims",
        "convert_element_type",
        "transpose",
        "copy",
        "copy_p",
        "reduce_precision",
        "integer_pow",
        "square",
        "abs",
        "neg",
    }
)
_FIRST_LIVE = frozenset({"pow", "atan2", "rem", "nextafter", "clamp"})
_SCANS = frozenset({"cummax", "cummin", "cumprod", "cumlogsumexp"})


@dataclass(frozen=True)
class Value:
    """An array in the evaluation, with whether it depends on the input and is a statistic."""

    array: Any
    live: bool = False
    stat: bool = False


def needed_equations(jaxpr: Jaxpr, outputs: Sequence[int]) -> list[int]:
    """Indices of the equations needed to compute ``jaxpr.outvars[outputs]``."""
    needed = {v for k in outputs if isinstance(v := jaxpr.outvars[k], Var)}
    keep: list[int] = []
    for index in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[index]
        if eqn.effects or any(v in needed for v in eqn.outvars):
            keep.append(index)
            needed.update(v for v in eqn.invars if isinstance(v, Var))
    return keep[::-1]


def evaluate(
    jaxpr: Jaxpr,
    consts: Sequence[Any],
    args: Sequence[Value],
    *,
    linearize: bool,
    dtype: Any,
    outputs: Sequence[int] | None = None,
    equations: Sequence[int] | None = None,
) -> list[Value]:
    """Run ``jaxpr`` on ``args``; floating values in ``dtype``, rewritten if ``linearize``."""
    env: dict[Var, Value] = {}
    rules = _Rules(linearize, np.dtype(dtype))

    def read(atom: Any) -> Value:
        if isinstance(atom, Literal):
            return Value(rules.promote(atom.val))
        return env[atom]

    for var, const in zip(jaxpr.constvars, consts, strict=True):
        env[var] = Value(rules.promote(const))
    for var, arg in zip(jaxpr.invars, args, strict=True):
        env[var] = Value(rules.promote(arg.array), arg.live, arg.stat)
    eqns = jaxpr.eqns if equations is None else [jaxpr.eqns[i] for i in equations]
    for eqn in eqns:
        outs = rules.apply(eqn, [read(v) for v in eqn.invars])
        for var, out in zip(eqn.outvars, outs, strict=True):
            env[var] = out
    wanted = range(len(jaxpr.outvars)) if outputs is None else outputs
    return [read(jaxpr.outvars[k]) for k in wanted]


class _Rules:
    def __init__(self, linearize: bool, dtype: np.dtype[Any]) -> None:
        self.linearize = linearize
        self.dtype = dtype

    def promote(self, array: Any) -> Any:
        kind = jnp.result_type(array)
        if jnp.issubdtype(kind, jnp.floating) and kind != self.dtype:
            return jnp.asarray(array).astype(self.dtype)
        return array

    def apply(self, eqn: Any, invals: list[Value]) -> list[Value]:
        name = eqn.primitive.name
        if name in _CALLS and _CALLS[name] in eqn.params:
            return self._call(eqn.params[_CALLS[name]], invals)
        live = [v.live for v in invals]
        if not self.linearize or not any(live):
            return self._bind(eqn, invals, live=any(live))
        rule = _RULES.get(name)
        if rule is None and name in _POINTWISE:
            rule = _pointwise
        if rule is None and name in _FIRST_LIVE:
            rule = _first_live
        if rule is None and name in _SCANS:
            rule = _scan_as_cumsum
        if rule is not None:
            out = rule(self, eqn, invals)
            return [Value(self._shaped(out.array, eqn.outvars[0].aval), out.live, out.stat)]
        outs = self._bind(eqn, invals, live=True)
        if name in _KEEPS_STAT and invals[0].stat:
            return [Value(o.array, o.live, True) for o in outs]
        return outs

    def _call(self, sub: Any, invals: list[Value]) -> list[Value]:
        jaxpr, consts = (sub.jaxpr, sub.consts) if isinstance(sub, ClosedJaxpr) else (sub, ())
        return evaluate(jaxpr, consts, invals, linearize=self.linearize, dtype=self.dtype)

    def _bind(self, eqn: Any, invals: list[Value], *, live: bool) -> list[Value]:
        params = dict(eqn.params)
        subjaxprs = any(_holds_jaxpr(p) for p in params.values())
        if subjaxprs:  # control flow: run as traced, in the dtypes it was traced with
            arrays = [
                jnp.asarray(v.array).astype(a.aval.dtype)
                if hasattr(a.aval, "dtype") and jnp.issubdtype(a.aval.dtype, jnp.floating)
                else v.array
                for v, a in zip(invals, eqn.invars, strict=True)
            ]
        else:
            arrays = [v.array for v in invals]
            keys = ["preferred_element_type"]
            if eqn.primitive.name == "convert_element_type":
                keys.append("new_dtype")
            for key in keys:
                kind = params.get(key)
                if kind is not None and jnp.issubdtype(kind, jnp.floating):
                    params[key] = self.dtype
        bound = eqn.primitive.get_bind_params(params)
        subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)  # jax < 0.7
        result = eqn.primitive.bind(*subfuns, *arrays, **bind_params)
        results = result if eqn.primitive.multiple_results else [result]
        return [Value(self.promote(r), live) for r in results]

    def _shaped(self, array: Any, aval: Any) -> Any:
        array = self.promote(array)
        if tuple(jnp.shape(array)) != tuple(aval.shape):
            array = jnp.broadcast_to(array, aval.shape)
        return array


def _holds_jaxpr(param: Any) -> bool:
    if isinstance(param, (Jaxpr, ClosedJaxpr)):
        return True
    return isinstance(param, (tuple, list)) and any(_holds_jaxpr(p) for p in param)


def _live(invals: list[Value]) -> list[Value]:
    return [v for v in invals if v.live]


def _mean_of_live(invals: list[Value]) -> Value:
    live = _live(invals)
    total = live[0].array
    for v in live[1:]:
        total = total + v.array
    array = total / len(live) if len(live) > 1 else total
    return Value(array, True, all(v.stat for v in live))


def _pointwise(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (x,) = invals
    if eqn.primitive.name in ("sqrt", "rsqrt") and x.stat:
        return Value(jnp.ones_like(x.array))  # the scale of a normalisation: a constant
    return x


def _first_live(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    if eqn.primitive.name == "clamp" and invals[1].live:
        return invals[1]
    return _live(invals)[0]


def _add(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    live = _live(invals)
    if len(live) == 1:
        return live[0]
    a, b = live
    return Value(a.array + b.array, True, a.stat and b.stat)


def _sub(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    a, b = invals
    if a.live and b.live and b.stat and not a.stat:
        return a  # centering by a mean: normalisation acts as identity
    return _add(rules, eqn, invals)


def _rescaled(array: Any) -> Any:
    """A product of two live factors over a constant ``max |product|`` (no gradient through
    it): attention and chained gates would otherwise square magnitudes until they overflow
    or underflow (rfest_torch._products explains)."""
    peak = lax.stop_gradient(jnp.max(jnp.abs(array))) if jnp.size(array) else 1.0
    return array / jnp.where(jnp.isfinite(peak) & (peak > 0), peak, 1.0)


def _mul(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    live = _live(invals)
    if len(live) == 1:
        return live[0]
    a, b = live
    return Value(_rescaled(a.array * b.array), True, a.stat and b.stat)


def _div(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    return _live(invals)[0]


def _select(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    cases = invals[1:]
    if not any(v.live for v in cases):
        (out,) = rules._bind(eqn, invals, live=True)
        return out
    return _mean_of_live(cases)


def _max_min(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    return _mean_of_live(invals)


def _reduce_as_mean(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (x,) = invals
    return Value(jnp.mean(x.array, axis=tuple(eqn.params["axes"])), True, True)


def _reduce_sum(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (out,) = rules._bind(eqn, invals, live=True)
    return Value(out.array, True, True)


def _window_as_mean(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    x = invals[0]
    p = eqn.params
    array = x.array
    total = lax.reduce_window(
        array,
        np.array(0, array.dtype),
        lax.add,
        p["window_dimensions"],
        p["window_strides"],
        p["padding"],
        p["base_dilation"],
        p["window_dilation"],
    )
    return Value(total / math.prod(p["window_dimensions"]), True)


def _scan_as_cumsum(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (x,) = invals
    return Value(lax.cumsum(x.array, eqn.params["axis"], eqn.params["reverse"]), True)


def _stop_gradient(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    return Value(invals[0].array)


def _positive(like: Any, fan_in: int) -> Any:
    return jnp.full(jnp.shape(like), 1.0 / max(fan_in, 1), dtype=jnp.result_type(like))


def _conv(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    lhs, rhs = invals
    if lhs.live and not rhs.live:
        out_axis = eqn.params["dimension_numbers"].rhs_spec[0]
        shape = jnp.shape(rhs.array)
        rhs = Value(_positive(rhs.array, math.prod(shape) // shape[out_axis]))
    (out,) = rules._bind(eqn, [lhs, rhs], live=True)
    return out


def _dot(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (contract_lhs, contract_rhs), _ = eqn.params["dimension_numbers"]
    operands = list(invals)
    for k, contract in enumerate((contract_lhs, contract_rhs)):
        if not operands[k].live:
            shape = jnp.shape(operands[k].array)
            operands[k] = Value(_positive(operands[k].array, math.prod(shape[d] for d in contract)))
    (out,) = rules._bind(eqn, operands, live=True)
    if all(v.live for v in invals):  # q @ k, attention @ v
        return Value(_rescaled(out.array), True, out.stat)
    return out


_Rule = Callable[[_Rules, Any, list[Value]], Value]

_RULES: dict[str, _Rule] = {
    "add": _add,
    "add_any": _add,
    "sub": _sub,
    "mul": _mul,
    "div": _div,
    "max": _max_min,
    "min": _max_min,
    "select_n": _select,
    "reduce_max": _reduce_as_mean,
    "reduce_min": _reduce_as_mean,
    "reduce_prod": _reduce_as_mean,
    "reduce_sum": _reduce_sum,
    "reduce_window_max": _window_as_mean,
    "reduce_window_min": _window_as_mean,
    "reduce_window": _window_as_mean,
    "stop_gradient": _stop_gradient,
    "conv_general_dilated": _conv,
    "dot_general": _dot,
}
