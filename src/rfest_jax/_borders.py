"""Whether a traced program reads no border: its field is the same at every input size.

The estimator checks a fit at a second, much larger size because padding inside a network
can cut every unit's field alike at the size given (a dilated layer whose outer taps land
in an intermediate map's padding): nothing in one probe shows such a cut. This module
proves, for a class of programs, that no such cut exists, so that check cannot change the
answer and is skipped (:meth:`rfest_jax.JaxGradientProvider.border_free`).

The argument. Walk the equations an output needs, tracking for every value that depends
on the input ("live") which array axis holds each input spatial axis and its *jump* (the
product of the strides so far). Accept only these equations on live values:

- elementwise primitives whose live operands have the same axes and jumps (linearized,
  constant operands are dropped: biases, scales, masks multiplied in; see
  :mod:`rfest_jax._interpret`), but not a ``select_n`` whose predicate is constant (a
  mask that routes entries by position);
- convolutions with a constant kernel, no padding and no input dilation, and window
  reductions (``reduce_window_max``/``min``/``sum``) with no padding and no base dilation;
- reductions, concatenations, padding and slices that leave every spatial axis whole,
  ``dot_general`` with one live operand contracting no spatial axis, transposes, and
  broadcasts, squeezes and reshapes that keep every spatial axis whole and in order.

Then, by induction over the equations, the input pixels a live value's entry ``p``
depends on (through paths of nonzero linearized weights) are ``J * p + E``: ``J`` its jump,
``E`` a set fixed by the program, the same for every ``p`` and every input size at which
that entry exists (a window of stride ``s``, dilation ``d`` and ``w`` taps gives
``(J * s) * q + U_k (J * k * d + E)``; merged operands of equal jump give
``J * p + (E_a | E_b)``), and every index read lies inside its operand, since nothing
pads, dilates or crops along a spatial axis. Linearized, every weight on such a path is
positive and the input is positive, so the gradient support of output unit ``p`` is
exactly ``J * p + E``, wholly inside the input at every size: units are translates of one
another with stride ``J`` and no field is cut anywhere. The estimator reads strides only
from slopes between units' exactly known starts and ends (all ``J`` here), and a uniform
fit matches its anchor unit, so its stride is ``J`` and its size and padding are those of
``E``'s hull: it predicts every unit at every larger size exactly, and the second-size
check (its middle unit, neighbour and end units) would find precisely the prediction.
Everything outside this list (any padding along a spatial axis, ``SAME`` convolutions
that pad at the size given, gathers, flips, masks, control flow, data-dependent kernels,
outputs without spatial axes) answers False: the check runs. The provider asks at both
the fit's size and the second size (a function may choose its layers by input size), and
only of the linearized program (at a real input, supports depend on the activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, Var

from rfest_jax._interpret import _CALLS, _ELEMENTWISE

__all__ = ["border_free"]


@dataclass(frozen=True)
class _Live:
    """Array axis of each input spatial axis, and the jump along each."""

    axes: tuple[int, ...]
    jumps: tuple[int, ...]


class _Refused(Exception):
    """An equation outside the accepted list (see the module docstring)."""


_WINDOWS = frozenset({"reduce_window_max", "reduce_window_min", "reduce_window_sum"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})


def border_free(jaxpr: Jaxpr, equations: Sequence[int], output: int, spatial_axes: int) -> bool:
    """Whether ``jaxpr.outvars[output]`` (channels last) reads no border of the input.

    ``jaxpr`` takes the parameters then the input ``(1, *spatial, C)``; ``equations``
    are the indices of the equations the output needs.
    """
    start = _Live(tuple(range(1, spatial_axes + 1)), (1,) * spatial_axes)
    env: dict[Var, _Live] = {jaxpr.invars[-1]: start}
    try:
        for index in equations:
            _apply(jaxpr.eqns[index], env)
    except _Refused:
        return False
    out = jaxpr.outvars[output]
    if isinstance(out, Literal) or out not in env:
        return False
    aval: Any = out.aval
    return len(aval.shape) == spatial_axes + 2 and env[out].axes == start.axes


def _apply(eqn: Any, env: dict[Var, _Live]) -> None:
    live = [env.get(v) if isinstance(v, Var) else None for v in eqn.invars]
    if not any(v is not None for v in live):
        return
    name = eqn.primitive.name
    if name in _CALLS and _CALLS[name] in eqn.params:
        sub = eqn.params[_CALLS[name]]
        jaxpr = sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub
        inner: dict[Var, _Live] = {
            var: value for var, value in zip(jaxpr.invars, live, strict=True) if value
        }
        for sub_eqn in jaxpr.eqns:
            _apply(sub_eqn, inner)
        for var, out in zip(eqn.outvars, jaxpr.outvars, strict=True):
            if isinstance(out, Var) and out in inner:
                env[var] = inner[out]
        return
    if name == "stop_gradient":
        return
    (outvar, *more) = eqn.outvars
    if more:
        raise _Refused(name)
    env[outvar] = _rule(name, eqn, live)


def _rule(name: str, eqn: Any, live: list[_Live | None]) -> _Live:
    p = eqn.params
    shapes = [tuple(v.aval.shape) for v in eqn.invars]
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if name in _ELEMENTWISE:
        if name == "select_n" and live[0] is None:
            raise _Refused("select_n routed by a constant mask")
        return _merged([v for v in live if v is not None])
    if name == "concatenate":
        merged = _merged([v for v in live if v is not None])
        if p["dimension"] in merged.axes:
            raise _Refused("concatenation along a spatial axis")
        return merged
    (x, *rest) = live
    if x is None or any(v is not None for v in rest):
        raise _Refused(f"{name} with a live operand past the first")
    if name == "conv_general_dilated":
        return _conv(x, p)
    if name in _WINDOWS:
        return _window(x, p)
    if name in _REDUCTIONS:
        return _dropping(x, p["axes"])
    if name == "squeeze":
        return _dropping(x, p["dimensions"])
    if name == "expand_dims":
        return _adding(x, p["dimensions"], len(out_shape))
    if name == "transpose":
        perm = list(p["permutation"])
        return _Live(tuple(perm.index(a) for a in x.axes), x.jumps)
    if name == "broadcast_in_dim":
        dims = p["broadcast_dimensions"]
        if any(shapes[0][a] != out_shape[dims[a]] for a in x.axes):
            raise _Refused("a spatial axis broadcast")
        return _Live(tuple(dims[a] for a in x.axes), x.jumps)
    if name == "reshape":
        return _reshaped(x, shapes[0], out_shape, p.get("dimensions"))
    if name == "dot_general":
        return _dot(x, p, len(shapes[0]))
    if name == "pad":
        if any(tuple(p["padding_config"][a]) != (0, 0, 0) for a in x.axes):
            raise _Refused("padding along a spatial axis")
        return x
    if name == "slice":
        strides = p["strides"] or (1,) * len(out_shape)
        for a in x.axes:
            if (p["start_indices"][a], p["limit_indices"][a], strides[a]) != (0, shapes[0][a], 1):
                raise _Refused("a spatial axis sliced")
        return x
    raise _Refused(name)


def _merged(values: list[_Live]) -> _Live:
    first = values[0]
    if any(v != first for v in values[1:]):
        raise _Refused("operands with different spatial axes or jumps")
    return first


def _conv(x: _Live, p: Any) -> _Live:
    numbers = p["dimension_numbers"]
    dims = len(numbers.lhs_spec) - 2
    if (
        any(tuple(pad) != (0, 0) for pad in p["padding"])
        or tuple(p["lhs_dilation"] or (1,) * dims) != (1,) * dims
        or p["batch_group_count"] != 1
        or set(x.axes) != set(numbers.lhs_spec[2:])
    ):
        raise _Refused("a convolution that pads, dilates its input or moves spatial axes")
    axes, jumps = [], []
    for axis, jump in zip(x.axes, x.jumps, strict=True):
        k = list(numbers.lhs_spec[2:]).index(axis)
        axes.append(numbers.out_spec[2 + k])
        jumps.append(jump * p["window_strides"][k])
    return _Live(tuple(axes), tuple(jumps))


def _window(x: _Live, p: Any) -> _Live:
    if any(tuple(pad) != (0, 0) for pad in p["padding"]) or any(b != 1 for b in p["base_dilation"]):
        raise _Refused("a window reduction that pads or dilates its input")
    return _Live(
        x.axes, tuple(j * p["window_strides"][a] for a, j in zip(x.axes, x.jumps, strict=True))
    )


def _dropping(x: _Live, dropped: Sequence[int]) -> _Live:
    if set(dropped) & set(x.axes):
        raise _Refused("a spatial axis reduced or squeezed")
    return _Live(tuple(a - sum(d < a for d in dropped) for a in x.axes), x.jumps)


def _adding(x: _Live, added: Sequence[int], ndim: int) -> _Live:
    kept = [a for a in range(ndim) if a not in set(added)]
    return _Live(tuple(kept[a] for a in x.axes), x.jumps)


def _reshaped(x: _Live, shape: tuple[int, ...], new: tuple[int, ...], dimensions: Any) -> _Live:
    """Axes of sizes one added or removed around spatial axes kept whole and in order."""
    if dimensions is not None:
        raise _Refused("reshape with dimensions")
    old_kept = [a for a, n in enumerate(shape) if n != 1]
    new_kept = [a for a, n in enumerate(new) if n != 1]
    if [shape[a] for a in old_kept] != [new[a] for a in new_kept]:
        raise _Refused("a reshape that merges or splits axes")
    mapping = dict(zip(old_kept, new_kept, strict=True))
    if any(a not in mapping for a in x.axes):
        raise _Refused("a spatial axis of length one reshaped")
    return _Live(tuple(mapping[a] for a in x.axes), x.jumps)


def _dot(x: _Live, p: Any, lhs_ndim: int) -> _Live:
    (contract, _), (batch, _) = p["dimension_numbers"]
    if (set(contract) | set(batch)) & set(x.axes):
        raise _Refused("a spatial axis contracted")
    free = [a for a in range(lhs_ndim) if a not in set(contract) | set(batch)]
    return _Live(tuple(len(batch) + free.index(a) for a in x.axes), x.jumps)
