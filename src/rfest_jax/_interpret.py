"""Evaluate a traced JAX program (a jaxpr), optionally as its linearized counterpart.

Any code written with ``jax.numpy``, ``jax.nn``, ``jax.lax`` or Flax lowers to the same few
primitives, so rewriting primitives covers plain functions and Flax modules alike; no layer
list is needed. Each value carries three flags: *live* (it depends on the model input),
*stat* (it is a statistic: a reduction of live values, e.g. a mean or a variance) and
*structural* (it is input-independent and built by the program from scalar literals alone,
e.g. ``iota``, or the interpolation matrix of ``jax.image.resize``; parameters, closed-over
arrays, random draws and everything computed from them are model data). Primitives with
no live operand run unchanged. With ``linearize=True``, on live operands:

- pointwise nonlinearities (``tanh``, ``logistic``, ``erf``, ``exp``, ``integer_pow``...)
  act as identity; ``max``/``min``/``select_n`` (ReLU, ``where``) as the mean of their live
  operands; ``clamp`` as identity; a ``select_n`` whose predicate does not depend on the
  input (an attention mask) takes each entry's case, a mask's fill (``-inf``) reading as 0;
- ``reduce_max``/``reduce_min`` act as the mean, ``reduce_window_max``/``_min`` as the
  windowed mean of the same geometry, ``cummax``-style scans as ``cumsum``;
- normalisation acts as identity: subtracting a statistic (centering) is dropped and
  ``rsqrt``/``sqrt`` of a statistic becomes the constant one; a division by a live
  value (a softmax's sum) acts as the mean of numerator and denominator, the
  denominator counted only where the numerator is not zero (masked attention);
- an input-independent kernel of ``conv_general_dilated`` or operand of ``dot_general``
  derived from model data becomes the positive constant ``1 / fan_in`` (weights may be zero
  or negative); a structural one becomes its absolute value, keeping its zeros (they are
  the geometry, e.g. of an interpolation); adding, subtracting or multiplying by an
  input-independent value leaves the live operand (biases zero, scales one); ``sub`` of two
  live values adds them, so no two paths cancel;
- ``stop_gradient`` makes its result input-independent.

Calls (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``, ``remat``) are
entered and rewritten too; control flow (``scan``, ``while``, ``cond``) runs unchanged.
Floating-point values are computed in the requested dtype throughout.

With ``narrow=True`` (linearized only) values are kept *narrowed*: linearized, every
weight from model data is one constant, so all channels a convolution or dense layer
produces are equal, and a value is stored with such axes cut to length one (its ``shape``
says the full, logical shape; the full value is the stored array broadcast to it).
Convolutions, dense layers, arithmetic, pooling, reductions, broadcasts, slices, padding,
concatenation and reshapes that keep those axes whole compute on the narrowed arrays; a
``dot_general`` with a structural constant sums the constant over the narrowed axes it
contracts and keeps its own axes whole; every other primitive (gathers, scans, control flow,
grouped convolutions of an input whose channels differ, convolutions with a structural
kernel, products of two live values in ``dot_general``) sees the full value, so results
never change, only their cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
_DRAWS = frozenset({"threefry2x32", "rng_bit_generator", "rng_uniform"})
_FIRST_LIVE = frozenset({"pow", "atan2", "rem", "nextafter", "clamp"})
_SCANS = frozenset({"cummax", "cummin", "cumprod", "cumlogsumexp"})
_ELEMENTWISE = _POINTWISE | frozenset(
    {
        "add",
        "add_any",
        "sub",
        "mul",
        "div",
        "max",
        "min",
        "pow",
        "atan2",
        "rem",
        "nextafter",
        "clamp",
        "select_n",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and",
        "or",
        "not",
        "xor",
        "is_finite",
        "convert_element_type",
        "copy",
        "copy_p",
        "real",
        "imag",
        "conj",
        "logistic",
        "sign",
    }
)


@dataclass(frozen=True)
class Value:
    """An array in the evaluation, with whether it depends on the input and is a statistic.

    ``shape``, when set, is the full shape of a narrowed value: ``array`` has length one
    on the axes along which the value does not change, and stands for
    ``broadcast_to(array, shape)`` (see :meth:`full`).
    """

    array: Any
    live: bool = False
    stat: bool = False
    shape: tuple[int, ...] | None = None
    structural: bool = False

    def full(self) -> Any:
        """The value at its full shape (the array itself when not narrowed)."""
        if self.shape is None or tuple(jnp.shape(self.array)) == self.shape:
            return self.array
        return jnp.broadcast_to(self.array, self.shape)

    def widened(self) -> Value:
        """This value, not narrowed."""
        if self.shape is None:
            return self
        return Value(self.full(), self.live, self.stat, structural=self.structural)

    @property
    def narrowed_axes(self) -> tuple[int, ...]:
        """Axes stored at length one that are longer in the full value."""
        if self.shape is None:
            return ()
        stored = jnp.shape(self.array)
        return tuple(a for a, n in enumerate(self.shape) if n > 1 and stored[a] == 1)


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
    narrow: bool = False,
) -> list[Value]:
    """Run ``jaxpr`` on ``args``; floating values in ``dtype``, rewritten if ``linearize``.

    ``narrow`` (used only with ``linearize``) computes channel-uniform values on one
    channel (see the module docstring); the returned values are never narrowed.
    Stable entry point: other backends (Keras on JAX) call it with these arguments.
    """
    rules = _Rules(linearize, np.dtype(dtype), narrow and linearize)
    outs = rules.run(jaxpr, consts, args, outputs=outputs, equations=equations)
    return [v.widened() for v in outs]


class _Rules:
    def __init__(self, linearize: bool, dtype: np.dtype[Any], narrow: bool = False) -> None:
        self.linearize = linearize
        self.dtype = dtype
        self.narrow = narrow

    def run(
        self,
        jaxpr: Jaxpr,
        consts: Sequence[Any],
        args: Sequence[Value],
        *,
        outputs: Sequence[int] | None = None,
        equations: Sequence[int] | None = None,
    ) -> list[Value]:
        env: dict[Var, Value] = {}

        def read(atom: Any) -> Value:
            if isinstance(atom, Literal):  # an array literal may be an inlined weight
                return Value(self.promote(atom.val), structural=np.ndim(atom.val) == 0)
            return env[atom]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = Value(self.promote(const))
        for var, arg in zip(jaxpr.invars, args, strict=True):
            if not self.narrow:
                arg = arg.widened()
            env[var] = Value(self.promote(arg.array), arg.live, arg.stat, arg.shape, arg.structural)
        eqns = jaxpr.eqns if equations is None else [jaxpr.eqns[i] for i in equations]
        for eqn in eqns:
            outs = self.apply(eqn, [read(v) for v in eqn.invars])
            for var, out in zip(eqn.outvars, outs, strict=True):
                env[var] = out
        wanted = range(len(jaxpr.outvars)) if outputs is None else outputs
        return [read(jaxpr.outvars[k]) for k in wanted]

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
        if not any(live):
            structural = (
                all(v.structural for v in invals)
                and not _holds_consts(eqn.params)
                and not _draws(name)
            )
            return self._bind(eqn, invals, live=False, structural=structural)
        if not self.linearize:
            return self._bind(eqn, invals, live=True)
        rule = _RULES.get(name)
        if rule is None and name in _POINTWISE:
            rule = _pointwise
        if rule is None and name in _FIRST_LIVE:
            rule = _first_live
        if rule is None and name in _SCANS:
            rule = _scan_as_cumsum
        if rule is not None:
            out = rule(self, eqn, invals)
            return [self._shaped(out, eqn.outvars[0].aval)]
        if self.narrow and any(v.narrowed_axes for v in invals):
            outs = self._bind_narrowed(eqn, invals)
        else:
            outs = self._bind(eqn, invals, live=True)
        if name in _KEEPS_STAT and invals[0].stat:
            return [Value(o.array, o.live, True, o.shape) for o in outs]
        return outs

    def _call(self, sub: Any, invals: list[Value]) -> list[Value]:
        jaxpr, consts = (sub.jaxpr, sub.consts) if isinstance(sub, ClosedJaxpr) else (sub, ())
        return self.run(jaxpr, consts, invals)

    def _bind(
        self,
        eqn: Any,
        invals: list[Value],
        *,
        live: bool,
        params: dict[str, Any] | None = None,
        structural: bool = False,
    ) -> list[Value]:
        params = dict(eqn.params) if params is None else params
        subjaxprs = any(_holds_jaxpr(p) for p in params.values())
        if subjaxprs:  # control flow: run as traced, in the dtypes it was traced with
            arrays = [
                jnp.asarray(v.full()).astype(a.aval.dtype)
                if hasattr(a.aval, "dtype") and jnp.issubdtype(a.aval.dtype, jnp.floating)
                else v.full()
                for v, a in zip(invals, eqn.invars, strict=True)
            ]
        else:
            arrays = [v.full() for v in invals]
            keys = ["preferred_element_type"]
            if eqn.primitive.name == "convert_element_type":
                keys.append("new_dtype")
            for key in keys:
                kind = params.get(key)
                if kind is not None and jnp.issubdtype(kind, jnp.floating):
                    params[key] = self.dtype
        outs = self._raw_bind(eqn, arrays, params)
        return [Value(r, live, structural=structural) for r in outs]

    def _raw_bind(self, eqn: Any, arrays: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        bound = eqn.primitive.get_bind_params(params)
        subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)  # jax < 0.7
        result = eqn.primitive.bind(*subfuns, *arrays, **bind_params)
        results = result if eqn.primitive.multiple_results else [result]
        return [self.promote(r) for r in results]

    def _bind_narrowed(self, eqn: Any, invals: list[Value]) -> list[Value]:
        """A primitive with a narrowed operand: on the narrowed arrays where that is exact."""
        name = eqn.primitive.name
        rule = _NARROW_RULES.get(name)
        if rule is not None:
            out = rule(self, eqn, invals)
            if out is not None:
                return [self._shaped(out, eqn.outvars[0].aval)]
        elif name in _ELEMENTWISE and not eqn.primitive.multiple_results:
            arrays = _common_arrays(invals)
            params = dict(eqn.params)
            if name == "convert_element_type":
                kind = params.get("new_dtype")
                if kind is not None and jnp.issubdtype(kind, jnp.floating):
                    params["new_dtype"] = self.dtype
            (out,) = self._raw_bind(eqn, arrays, params)
            return [self._shaped(Value(out, True), eqn.outvars[0].aval)]
        return self._bind(eqn, invals, live=True)

    def _shaped(self, out: Value, aval: Any) -> Value:
        """``out`` at ``aval``'s shape: narrowed when allowed and its array broadcasts to it."""
        array = self.promote(out.array)
        shape = tuple(aval.shape)
        stored = tuple(jnp.shape(array))
        if stored == shape:
            return Value(array, out.live, out.stat)
        if (
            self.narrow
            and len(stored) == len(shape)
            and all(s in (1, n) for s, n in zip(stored, shape, strict=True))
        ):
            return Value(array, out.live, out.stat, shape)
        return Value(jnp.broadcast_to(array, shape), out.live, out.stat)


def _draws(name: str) -> bool:
    """Random numbers: weights drawn inside the program are model data, like parameters."""
    return name.startswith("random_") or name in _DRAWS


def _holds_consts(params: Mapping[str, Any]) -> bool:
    """Whether a primitive's sub-programs close over arrays (model data, like constvars)."""

    def holds(param: Any) -> bool:
        if isinstance(param, ClosedJaxpr):
            return bool(param.consts)
        return isinstance(param, (tuple, list)) and any(holds(p) for p in param)

    return any(holds(p) for p in params.values())


def _holds_jaxpr(param: Any) -> bool:
    if isinstance(param, (Jaxpr, ClosedJaxpr)):
        return True
    return isinstance(param, (tuple, list)) and any(_holds_jaxpr(p) for p in param)


def _common_arrays(invals: Sequence[Value]) -> list[Any]:
    """The operands of an elementwise primitive, broadcast to one shape (scalars stay)."""
    shapes = [tuple(jnp.shape(v.array)) for v in invals]
    common = np.broadcast_shapes(*shapes)
    return [
        v.array if s == () or s == common else jnp.broadcast_to(v.array, common)
        for v, s in zip(invals, shapes, strict=True)
    ]


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
    """A live numerator over a constant: the numerator (the scale of a normalisation,
    ``rsqrt`` of a statistic, is a constant by then). A live denominator (a softmax's sum,
    ``x / sum(|x|)``) carries the inputs it depends on, but only where the numerator is
    not zero: ``d(a / b) / db = -a / b**2``, and an attention mask's entries are exact
    zeros over the row's sum. Linearized values are positive wherever they are not
    such a zero."""
    a, b = invals
    if not b.live:
        return a
    if not a.live:
        return b
    reach = jnp.where(lax.stop_gradient(a.array) != 0, b.array, 0)
    return Value((a.array + reach) / 2, True, a.stat and b.stat)


MASK_FILL = -50.0
"""A constant case of ``where`` at or below this (``-inf``, ``finfo.min``, ``-1e9``) that an
input-independent mask selects is an attention mask's fill: ``exp`` makes it an exact zero
weight in the network's softmax, so the linearized value there is 0 (rfest_torch reads
softmax inputs this far below their row's maximum as masked alike)."""


def _select(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    predicate, cases = invals[0], invals[1:]
    if not any(v.live for v in cases):
        if rules.narrow:
            (out,) = rules._bind_narrowed(eqn, invals)
        else:
            (out,) = rules._bind(eqn, invals, live=True)
        return out
    if predicate.live:  # ReLU and the like: which case is taken depends on the input
        return _mean_of_live(cases)
    return _routed(predicate, cases)


def _routed(predicate: Value, cases: list[Value]) -> Value:
    """``where(mask, x, fill)`` with a mask that does not depend on the input (causal,
    banded, windowed attention): each entry takes its case, as in the network, so masked
    entries carry no gradient; a mask's fill (see :data:`MASK_FILL`) reads as 0."""
    arrays = [v.array if v.live else _unfilled(v.array) for v in cases]
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in (predicate.array, *arrays)))
    out = lax.select_n(
        jnp.broadcast_to(predicate.array, shape), *(jnp.broadcast_to(a, shape) for a in arrays)
    )
    return Value(out, True, all(v.stat for v in cases if v.live))


def _unfilled(constant: Any) -> Any:
    array = jnp.asarray(constant)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        return array
    return jnp.where(jnp.isfinite(array) & (array > MASK_FILL), array, jnp.zeros_like(array))


def _max_min(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    return _mean_of_live(invals)


def _reduce_as_mean(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (x,) = invals  # a mean over a narrowed axis is its one stored entry: exact as it is
    return Value(jnp.mean(x.array, axis=tuple(eqn.params["axes"])), True, True)


def _reduce_sum(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (x,) = invals
    axes = tuple(eqn.params["axes"])
    if x.shape is None:
        (out,) = rules._bind(eqn, [x], live=True)
        return Value(out.array, True, True)
    repeats = math.prod(x.shape[a] for a in axes if a in x.narrowed_axes)
    return Value(jnp.sum(x.array, axis=axes) * repeats, True, True)


def _window_as_mean(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    p = eqn.params
    x = invals[0]
    if not _window_keeps(x, p):
        x = x.widened()
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


def _window_keeps(x: Value, p: Mapping[str, Any]) -> bool:
    """A window of one entry (no stride, padding or dilation) along every narrowed axis."""
    return all(
        p["window_dimensions"][a] == 1
        and p["window_strides"][a] == 1
        and tuple(p["padding"][a]) == (0, 0)
        and p["base_dilation"][a] == 1
        and p["window_dilation"][a] == 1
        for a in x.narrowed_axes
    )


def _scan_as_cumsum(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (x,) = invals
    if eqn.params["axis"] in x.narrowed_axes:
        x = x.widened()
    return Value(lax.cumsum(x.array, eqn.params["axis"], eqn.params["reverse"]), True)


def _stop_gradient(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    return Value(invals[0].full())


def _positive(const: Value, fan_in: int) -> Any:
    """A linearized constant operand: ``1 / fan_in`` for model data, ``|const|`` if structural."""
    like = const.full()
    if const.structural:
        return jnp.abs(like)
    return jnp.full(jnp.shape(like), 1.0 / max(fan_in, 1), dtype=jnp.result_type(like))


def _conv(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    lhs, rhs = invals
    if rules.narrow and lhs.live and not rhs.live and not rhs.structural:
        out = _conv_narrowed(rules, eqn, lhs, rhs)
        if out is not None:
            return out
    lhs = lhs.widened()
    if lhs.live and not rhs.live:
        out_axis = eqn.params["dimension_numbers"].rhs_spec[0]
        shape = jnp.shape(rhs.array)
        rhs = Value(_positive(rhs, math.prod(shape) // shape[out_axis]))
    (out,) = rules._bind(eqn, [lhs, rhs.widened()], live=True)
    return out


def _conv_narrowed(rules: _Rules, eqn: Any, lhs: Value, rhs: Value) -> Value | None:
    """A constant kernel ``w``: output channel ``o`` is ``w`` times the windowed sum of its
    group's input channels, the same for every ``o`` when the groups' inputs agree: one
    single-channel convolution of the summed input (of one input channel times the group
    width, when the input is narrowed along its channels already)."""
    params = dict(eqn.params)
    numbers = params["dimension_numbers"]
    feature, out_axis, in_axis = numbers.lhs_spec[1], numbers.rhs_spec[0], numbers.rhs_spec[1]
    groups = params["feature_group_count"]
    if params["batch_group_count"] != 1:
        return None
    spatial = [a for a in lhs.narrowed_axes if a != feature]
    if spatial:  # uniform along space does not survive the borders: compute them
        assert lhs.shape is not None
        lhs = Value(jnp.broadcast_to(lhs.array, _restored(lhs, spatial)), True, lhs.stat, lhs.shape)
    width = (lhs.shape or jnp.shape(lhs.array))[feature]
    if feature in lhs.narrowed_axes:
        single, scale = lhs.array, width // groups
    elif groups == 1:
        single, scale = jnp.sum(lhs.array, axis=feature, keepdims=True), 1
    else:
        return _depthwise_box_sum(rules, eqn, lhs, rhs)
    kernel_shape = tuple(jnp.shape(rhs.array))
    fan_in = max(math.prod(kernel_shape) // kernel_shape[out_axis], 1)
    single = rules.promote(single)
    if _as_window_sum(params):
        return Value(_box_sum(single, eqn, kernel_shape) * (scale / fan_in), True)
    kernel = jnp.full(
        tuple(1 if a in (out_axis, in_axis) else n for a, n in enumerate(kernel_shape)),
        scale / fan_in,
        dtype=rules.dtype,
    )
    params["feature_group_count"] = 1
    if params.get("preferred_element_type") is not None:
        params["preferred_element_type"] = rules.dtype
    (out,) = rules._raw_bind(eqn, [single, kernel], params)
    return Value(out, True)


def _depthwise_box_sum(rules: _Rules, eqn: Any, lhs: Value, rhs: Value) -> Value | None:
    """A depthwise convolution (one input channel per group, one output channel each) of
    channels that differ (NASNet's separable convolutions after a concatenation): with a
    constant kernel, each channel's window sum, scaled. Kept at full width, but a window
    sum, which the numpy evaluation runs (:mod:`rfest_jax._numpy_eval`); a grouped
    convolution would be compiled by XLA at every probe size (NASNetMobile: 10 s each)."""
    numbers = eqn.params["dimension_numbers"]
    kernel_shape = tuple(jnp.shape(rhs.array))
    groups = eqn.params["feature_group_count"]
    width = (lhs.shape or jnp.shape(lhs.array))[numbers.lhs_spec[1]]
    if not (
        groups == width == kernel_shape[numbers.rhs_spec[0]]
        and kernel_shape[numbers.rhs_spec[1]] == 1
        and _as_window_sum(eqn.params)
    ):
        return None
    fan_in = math.prod(kernel_shape) // groups
    x = rules.promote(lhs.widened().array)
    return Value(_box_sum(x, eqn, kernel_shape) * (1 / fan_in), True)


def _as_window_sum(params: dict[str, Any]) -> bool:
    """A convolution whose output lays out its axes as its input does, without a crop."""
    numbers = params["dimension_numbers"]
    return numbers.lhs_spec == numbers.out_spec and all(
        lo >= 0 and hi >= 0 for lo, hi in params["padding"]
    )


def _box_sum(x: Any, eqn: Any, kernel_shape: tuple[int, ...]) -> Any:
    """A one-channel convolution with a kernel of ones, as a windowed sum (cheaper to compile)."""
    p = eqn.params
    numbers = p["dimension_numbers"]
    ndim = len(kernel_shape)
    window, strides, padding = [1] * ndim, [1] * ndim, [(0, 0)] * ndim
    base, dilation = [1] * ndim, [1] * ndim
    for i, (axis, k_axis) in enumerate(
        zip(numbers.lhs_spec[2:], numbers.rhs_spec[2:], strict=True)
    ):
        window[axis] = kernel_shape[k_axis]
        strides[axis] = p["window_strides"][i]
        padding[axis] = tuple(p["padding"][i])
        base[axis] = (p["lhs_dilation"] or (1,) * (ndim - 2))[i]
        dilation[axis] = (p["rhs_dilation"] or (1,) * (ndim - 2))[i]
    if window == strides == base == [1] * ndim and all(pad == (0, 0) for pad in padding):
        return x
    return lax.reduce_window(
        x, np.array(0, x.dtype), lax.add, window, strides, padding, base, dilation
    )


def _restored(x: Value, axes: Sequence[int]) -> tuple[int, ...]:
    """The stored shape of ``x`` with ``axes`` back at their full length."""
    assert x.shape is not None
    stored = list(jnp.shape(x.array))
    for a in axes:
        stored[a] = x.shape[a]
    return tuple(stored)


def _dot(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    (contract_lhs, contract_rhs), _ = eqn.params["dimension_numbers"]
    if rules.narrow and [v.live for v in invals].count(True) == 1:
        if any(v.structural for v in invals):
            return _dot_narrowed_structural(rules, eqn, invals)
        return _dot_narrowed(rules, eqn, invals)
    operands = [v.widened() for v in invals]
    for k, contract in enumerate((contract_lhs, contract_rhs)):
        if not operands[k].live:
            shape = jnp.shape(operands[k].array)
            fan_in = math.prod(shape[d] for d in contract)
            operands[k] = Value(_positive(operands[k], fan_in))
    (out,) = rules._bind(eqn, operands, live=True)
    if all(v.live for v in invals):  # q @ k, attention @ v
        return Value(_rescaled(out.array), True, out.stat)
    return out


def _live_side(
    params: dict[str, Any], invals: list[Value]
) -> tuple[
    int, Value, Value, tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]
]:
    """A ``dot_general`` of one live operand and a constant: the live operand's position
    ``k``, the two operands, and the (live, constant) contracted and batch axes."""
    (contract_lhs, contract_rhs), (batch_lhs, batch_rhs) = params["dimension_numbers"]
    k = 0 if invals[0].live else 1
    if k == 0:
        return k, invals[0], invals[1], (contract_lhs, contract_rhs), (batch_lhs, batch_rhs)
    return k, invals[1], invals[0], (contract_rhs, contract_lhs), (batch_rhs, batch_lhs)


def _dot_narrowed(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    """One live operand and a constant ``w``: every free entry of the constant's side sums
    the same inputs, so the output is narrowed along them; the constant is one entry long
    wherever the live operand is narrowed or the axis is free."""
    params = dict(eqn.params)
    k, x, const, (x_contract, c_contract), (x_batch, c_batch) = _live_side(params, invals)
    full_const = tuple(jnp.shape(const.full()))
    fan_in = math.prod(full_const[d] for d in c_contract)
    stored = jnp.shape(x.array)
    shape = [1] * len(full_const)
    for xa, ca in (*zip(x_contract, c_contract, strict=True), *zip(x_batch, c_batch, strict=True)):
        shape[ca] = stored[xa]
    repeats = math.prod(
        full_const[ca]
        for xa, ca in zip(x_contract, c_contract, strict=True)
        if xa in x.narrowed_axes
    )
    constant = jnp.full(shape, repeats / max(fan_in, 1), dtype=rules.dtype)
    operands = [x.array, constant] if k == 0 else [constant, x.array]
    if params.get("preferred_element_type") is not None:
        params["preferred_element_type"] = rules.dtype
    (out,) = rules._raw_bind(eqn, [rules.promote(o) for o in operands], params)
    return Value(out, True)


def _dot_narrowed_structural(rules: _Rules, eqn: Any, invals: list[Value]) -> Value:
    """One live operand ``x`` and a structural constant ``c`` (entries differ): along a
    contracted axis on which ``x`` is narrowed, ``sum_j x c_j = x sum_j |c_j|``, so ``|c|``
    is summed over it; ``x``'s free narrowed axes stay narrowed in the output; narrowed
    batch axes are restored, since ``c`` may change along them."""
    params = dict(eqn.params)
    k, x, const, (x_contract, c_contract), (x_batch, _) = _live_side(params, invals)
    restore = [a for a in x_batch if a in x.narrowed_axes]
    array = jnp.broadcast_to(x.array, _restored(x, restore)) if restore else x.array
    summed = tuple(
        ca for xa, ca in zip(x_contract, c_contract, strict=True) if xa in x.narrowed_axes
    )
    constant = jnp.sum(jnp.abs(rules.promote(const.full())), axis=summed, keepdims=True)
    operands = [array, constant] if k == 0 else [constant, array]
    if params.get("preferred_element_type") is not None:
        params["preferred_element_type"] = rules.dtype
    (out,) = rules._raw_bind(eqn, [rules.promote(o) for o in operands], params)
    return Value(out, True)


def _broadcast_narrowed(rules: _Rules, eqn: Any, invals: list[Value]) -> Value | None:
    """New axes of a broadcast are uniform: they stay one entry long, as narrowed ones do."""
    (x,) = invals
    params = dict(eqn.params)
    stored = jnp.shape(x.array)
    shape = [1] * len(params["shape"])
    for source, target in enumerate(params["broadcast_dimensions"]):
        shape[target] = stored[source]
    params["shape"] = tuple(shape)
    (out,) = rules._raw_bind(eqn, [x.array], params)
    return Value(out, True, x.stat)


def _reshape_narrowed(rules: _Rules, eqn: Any, invals: list[Value]) -> Value | None:
    """A reshape that keeps every narrowed axis whole (one axis in, one axis out)."""
    (x,) = invals
    assert x.shape is not None
    if eqn.params.get("dimensions") is not None:
        return None
    target = list(eqn.params["new_sizes"])
    for ins, outs in _reshape_groups(x.shape, tuple(target)):
        narrowed = [a for a in ins if a in x.narrowed_axes]
        if not narrowed:
            continue
        long_in = [a for a in ins if x.shape[a] > 1]
        long_out = [a for a in outs if target[a] > 1]
        if len(long_in) != 1 or len(long_out) != 1:
            return None
        target[long_out[0]] = 1
    return Value(jnp.reshape(x.array, target), True, x.stat)


def _reshape_groups(
    before: tuple[int, ...], after: tuple[int, ...]
) -> list[tuple[list[int], list[int]]]:
    """Runs of axes of ``before`` and ``after`` holding the same entries, in order."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(before) or j < len(after):
        ins, outs = [], []
        size_in = size_out = 1
        while True:
            if size_in <= size_out and i < len(before):
                size_in *= before[i]
                ins.append(i)
                i += 1
            elif j < len(after):
                size_out *= after[j]
                outs.append(j)
                j += 1
            else:
                break
            if (
                size_in == size_out
                and (i == len(before) or before[i] != 1)
                and (j == len(after) or after[j] != 1)
            ):
                break
        groups.append((ins, outs))
    return groups


def _slice_narrowed(rules: _Rules, eqn: Any, invals: list[Value]) -> Value | None:
    """A slice of an axis along which a value does not change does not change along it."""
    (x,) = invals
    params = dict(eqn.params)
    start, limit = list(params["start_indices"]), list(params["limit_indices"])
    strides = list(params["strides"] or [1] * len(start))
    for a in x.narrowed_axes:
        start[a], limit[a], strides[a] = 0, 1, 1
    params.update(start_indices=tuple(start), limit_indices=tuple(limit), strides=tuple(strides))
    (out,) = rules._raw_bind(eqn, [x.array], params)
    return Value(out, True, x.stat)


def _pad_narrowed(rules: _Rules, eqn: Any, invals: list[Value]) -> Value | None:
    x, value = invals
    if value.live or any(
        tuple(eqn.params["padding_config"][a]) != (0, 0, 0) for a in x.narrowed_axes
    ):
        return None
    (out,) = rules._raw_bind(eqn, [x.array, value.full()], dict(eqn.params))
    return Value(out, True)


def _concatenate_narrowed(rules: _Rules, eqn: Any, invals: list[Value]) -> Value | None:
    """Concatenation stays narrowed along the other axes that all operands narrow."""
    axis = eqn.params["dimension"]
    keep = set.intersection(*(set(v.narrowed_axes) for v in invals)) - {axis}
    arrays = []
    for v in invals:
        full_v = v.shape or tuple(jnp.shape(v.array))
        target = tuple(1 if a in keep else n for a, n in enumerate(full_v))
        arrays.append(jnp.broadcast_to(v.array, target))
    (out,) = rules._raw_bind(eqn, arrays, dict(eqn.params))
    return Value(out, True)


_Rule = Callable[[_Rules, Any, list[Value]], Value]
_NarrowRule = Callable[[_Rules, Any, list[Value]], "Value | None"]

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

_NARROW_RULES: dict[str, _NarrowRule] = {
    "broadcast_in_dim": _broadcast_narrowed,
    "reshape": _reshape_narrowed,
    "squeeze": lambda rules, eqn, invals: Value(
        rules._raw_bind(eqn, [invals[0].array], dict(eqn.params))[0], True, invals[0].stat
    ),
    "transpose": lambda rules, eqn, invals: Value(
        rules._raw_bind(eqn, [invals[0].array], dict(eqn.params))[0], True, invals[0].stat
    ),
    "slice": _slice_narrowed,
    "pad": _pad_narrowed,
    "concatenate": _concatenate_narrowed,
}
