"""Channel collapse: run a linearized forward pass on one channel where all channels agree.

Linearized, every weight of a layer is the same constant (see
:mod:`rfest_torch._provider`), so a convolution's output channels all hold the same
values, and so does everything computed from them channel by channel. Such a tensor is
kept as one channel broadcast to the full width (channel stride 0): its shape and values
are exactly those of the full tensor, but convolutions, pooling and arithmetic run on a
single channel. A ResNet-50 pass then costs about as much as a one-channel network.

The same holds for any axis a tensor is broadcast along (stride 0), not only the channel
axis 1 of a feature map: the features (last axis) of the tokens ``(N, T, C)`` a linear
layer with a constant weight makes, the heads and head features of attention. Elementwise
arithmetic, reductions, matrix products and reshapes keep such axes at one entry wherever
every operand is broadcast along them; attention mixes tokens, not features, so a
transformer's pass costs about as much as one feature per token.

Only operations known to treat the narrowed axes alike are narrowed; any other operation
receives the broadcast tensor as an ordinary tensor (its values are the true values), so
results never change, only their cost. In-place writes into a broadcast tensor raise in
PyTorch; the provider then runs the pass again without collapsing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["ChannelCollapseMode", "is_collapsed", "narrow_channel", "single_channel"]

_Handler = Callable[..., Any]
_CHANNEL = 1
_SINGLE = "_rfest_single_channel"
_KERNELS = "_rfest_kernels"


def is_collapsed(x: Any) -> bool:
    """A batched tensor whose channels are one channel broadcast (stride 0)."""
    return (
        isinstance(x, torch.Tensor)
        and x.dim() > _CHANNEL
        and x.shape[_CHANNEL] > 1
        and x.stride(_CHANNEL) == 0
    )


def _broadcast_axes(x: Any) -> tuple[int, ...]:
    """Axes along which ``x`` is one entry broadcast (stride 0, more than one entry)."""
    if not isinstance(x, torch.Tensor):
        return ()
    return tuple(d for d in range(x.dim()) if x.shape[d] > 1 and x.stride(d) == 0)


def single_channel(x: torch.Tensor) -> torch.Tensor:
    """``x`` cut to one entry along every axis it is broadcast along (same values)."""
    return _cut(x, _broadcast_axes(x))


def narrow_channel(x: torch.Tensor) -> torch.Tensor:
    """The one stored channel ``(N, 1, *spatial)`` of a collapsed tensor, in its graph."""
    return _cut(x, (_CHANNEL,))


def _constant(weight: Any) -> bool:
    """A tensor that is one value broadcast to its shape (rfest's linearized weights)."""
    return (
        isinstance(weight, torch.Tensor)
        and weight.numel() > 0
        and all(stride == 0 for stride in weight.stride())
    )


def _kernel(weight: torch.Tensor, scale: int) -> torch.Tensor:
    """The one-channel kernel ``scale * w`` of a constant weight, kept on the weight."""
    kernels: dict[int, torch.Tensor] = weight.__dict__.setdefault(_KERNELS, {})
    if scale not in kernels:
        kernel = torch.ones((1, 1, *weight.shape[2:]), dtype=weight.dtype, device=weight.device)
        kernels[scale] = kernel * (_value(weight) * scale)
    return kernels[scale]


def _value(constant: torch.Tensor) -> torch.Tensor:
    return constant[(0,) * constant.dim()]


def _cut(x: torch.Tensor, axes: Iterable[int]) -> torch.Tensor:
    """``x`` cut to one entry along ``axes`` (along which it is broadcast).

    The tensor ``x`` was widened from is used as it is: cutting it back out of the
    broadcast view would cost a full-width gradient buffer in the backward pass.
    """
    axes = [d for d in axes if x.shape[d] != 1]
    if not axes:
        return x
    single = getattr(x, _SINGLE, None)
    if (
        isinstance(single, torch.Tensor)
        and single.dim() == x.dim()
        and all(single.shape[d] == 1 for d in axes)
    ):
        shape = [1 if d in axes else n for d, n in enumerate(x.shape)]
        return single if list(single.shape) == shape else single.expand(shape)
    for d in axes:
        x = x.narrow(d, 0, 1)
    return x


def _widen(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``x`` broadcast to ``shape``, remembering ``x`` for :func:`_cut`."""
    if tuple(x.shape) == tuple(shape):
        return x
    wide = x.expand(list(shape))
    setattr(wide, _SINGLE, x)
    return wide


def _common_axes(tensors: Sequence[torch.Tensor], ndim: int) -> dict[int, int]:
    """Axes of an ``ndim``-axis broadcast result along which every tensor that spans them
    is broadcast, with their widths."""
    spans: dict[int, set[int] | None] = {}
    for t in tensors:
        offset = ndim - t.dim()
        for d, n in enumerate(t.shape):
            if n == 1:
                continue
            axis = d + offset
            seen = spans.setdefault(axis, set())
            if seen is None:
                continue
            if t.stride(d) != 0:
                spans[axis] = None
            else:
                seen.add(n)
    return {a: next(iter(w)) for a, w in spans.items() if w is not None and len(w) == 1}


def _cut_to(t: Any, axes: Iterable[int], ndim: int) -> Any:
    """A tensor argument cut along those of the result's ``axes`` it spans."""
    if not isinstance(t, torch.Tensor):
        return t
    offset = ndim - t.dim()
    return _cut(t, [a - offset for a in axes if a - offset >= 0])


def _widened(out: Any, axes: dict[int, int], ndim: int) -> Any:
    """A result computed on cut arguments, broadcast back along ``axes``."""
    if not isinstance(out, torch.Tensor) or out.dim() != ndim:
        return NotImplemented
    shape = list(out.shape)
    for axis, width in axes.items():
        if shape[axis] != 1:
            return NotImplemented
        shape[axis] = width
    return _widen(out, shape)


def _elementwise(func: _Handler) -> _Handler:
    """Broadcasting elementwise functions: cut the axes every tensor argument agrees along."""

    def run(*args: Any, **kwargs: Any) -> Any:
        if "out" in kwargs:
            return NotImplemented
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not any(_broadcast_axes(t) for t in tensors):
            return NotImplemented
        ndim = max(t.dim() for t in tensors)
        axes = _common_axes(tensors, ndim)
        if not axes:
            return NotImplemented  # mixed, or not broadcastable: PyTorch decides
        cut_args = [_cut_to(a, axes, ndim) for a in args]
        cut_kwargs = {k: _cut_to(v, axes, ndim) for k, v in kwargs.items()}
        return _widened(func(*cut_args, **cut_kwargs), axes, ndim)

    return run


def _view(func: _Handler) -> _Handler:
    """Views that move, add, drop or pick axes (transpose, permute, unsqueeze, expand,
    basic indexing, unbind, chunk...): the same view of the cut tensor, checked against
    the view of the tensor itself (a tuple of views for unbind and chunk)."""

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        axes = _broadcast_axes(x)
        if not axes or not all(_basic_index(a) for a in args):
            return NotImplemented
        try:
            seen = func(x.detach(), *args, **kwargs)
            out = func(_cut(x, axes), *args, **kwargs)
        except (RuntimeError, IndexError, TypeError, ValueError):
            return NotImplemented
        if isinstance(seen, torch.Tensor):
            return _widen_like(out, seen)
        if not isinstance(seen, (tuple, list)) or not isinstance(out, (tuple, list)):
            return NotImplemented
        if len(out) == 1 < len(seen):  # split along a cut axis: every piece is the same
            out = list(out) * len(seen)
        if len(seen) != len(out):
            return NotImplemented
        widened = [_widen_like(o, v) for o, v in zip(out, seen, strict=True)]
        return NotImplemented if NotImplemented in widened else type(seen)(widened)

    return run


def _basic_index(index: Any) -> bool:
    """No tensor or list indices: ``x[index]`` is a view (advanced indexing copies)."""
    if isinstance(index, tuple):
        return all(_basic_index(i) for i in index)
    return not isinstance(index, (torch.Tensor, list))


def _widen_like(out: Any, seen: Any) -> Any:
    """``out`` (a view of a cut tensor) broadcast to ``seen``, the same view uncut."""
    if not (isinstance(out, torch.Tensor) and isinstance(seen, torch.Tensor)):
        return NotImplemented
    if out.dim() != seen.dim() or any(
        m != n and not (m == 1 and seen.stride(d) == 0)
        for d, (m, n) in enumerate(zip(out.shape, seen.shape, strict=True))
    ):
        return NotImplemented
    return _widen(out, seen.shape)


def _regrouped(old: Sequence[int], axes: Sequence[int], new: Sequence[int]) -> list[int] | None:
    """The shape ``new`` of a reshape with the groups of broadcast ``axes`` cut to ones.

    A reshape merges and splits runs of axes; a run made only of broadcast axes becomes a
    run of broadcast axes. None when a run mixes broadcast and stored axes.
    """
    if 0 in old or math.prod(old) != math.prod(new):
        return None
    cut, i, j = list(new), 0, 0
    while i < len(old) and j < len(new):
        group, outputs, p, q = [i], [j], old[i], new[j]
        i, j = i + 1, j + 1
        while p != q:
            if p < q:
                if i == len(old):
                    return None
                p, group = p * old[i], [*group, i]
                i += 1
            else:
                if j == len(new):
                    return None
                q, outputs = q * new[j], [*outputs, j]
                j += 1
        spanned = [d in axes for d in group if old[d] > 1]
        if any(spanned) and not all(spanned):
            return None
        if spanned and all(spanned):
            for d in outputs:
                cut[d] = 1
    return cut


def _shape_of(x: torch.Tensor, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The target shape of view/reshape/flatten/unflatten, -1 resolved; None if unknown."""
    name = getattr(func, "__name__", "")
    dims = x.dim()
    if name == "flatten":
        start = args[0] if args else kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
        if not (isinstance(start, int) and isinstance(end, int)) or dims == 0:
            return None
        start, end = start % dims, end % dims
        return [*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :]]
    if name == "unflatten":
        dim = args[0] if args else kwargs.get("dim")
        sizes = args[1] if len(args) > 1 else kwargs.get("sizes")
        if not isinstance(dim, int) or sizes is None:
            return None
        dim %= dims
        split = _resolved(list(sizes), x.shape[dim])
        return None if split is None else [*x.shape[:dim], *split, *x.shape[dim + 1 :]]
    shape = kwargs.get("shape", kwargs.get("size"))
    if shape is None:
        shape = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, int) for n in shape):
        return None  # view(dtype), symbolic sizes
    return _resolved(list(shape), x.numel())


def _resolved(shape: list[int], total: int) -> list[int] | None:
    if any(not isinstance(n, int) for n in shape) or shape.count(-1) > 1:
        return None
    if -1 in shape:
        known = math.prod(n for n in shape if n != -1)
        if known == 0 or total % known:
            return None
        shape[shape.index(-1)] = total // known
    return shape if math.prod(shape) == total else None


def _reshape(func: _Handler) -> _Handler:
    """view/reshape/flatten/unflatten of a broadcast tensor: the same reshape of the cut
    tensor when every merged or split run of axes is broadcast through or not at all."""

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        axes = _broadcast_axes(x)
        if not axes:
            return NotImplemented
        shape = _shape_of(x, func, args, kwargs)
        cut = None if shape is None else _regrouped(tuple(x.shape), axes, shape)
        if cut is not None:
            return _widen(_cut(x, axes).reshape(cut), shape)
        if func is torch.Tensor.view and shape is not None:
            # Merges broadcast axes with stored ones (heads into the batch): a copy, as
            # the network's own ``.contiguous().view(...)`` made before (see _contiguous).
            return x.contiguous().view(shape)
        return NotImplemented

    return run


def _roll(x: Any, shifts: Any, dims: Any = None) -> Any:
    """A roll along axes the tensor is not broadcast along: the cut tensor rolled."""
    axes = _broadcast_axes(x)
    if not axes or dims is None:
        return NotImplemented
    rolled = [dims] if isinstance(dims, int) else list(dims)
    if any(d % x.dim() in axes for d in rolled):
        return NotImplemented
    return _widen(torch.roll(_cut(x, axes), shifts, dims), x.shape)


def _contiguous(x: Any, *args: Any, **kwargs: Any) -> Any:
    """A broadcast tensor stays broadcast: a dense copy would cost the full width.
    The views that follow go through :func:`_reshape`."""
    return x if _broadcast_axes(x) else NotImplemented


def _channelwise(func: _Handler, spatial_axes: int | None = None) -> _Handler:
    """An operation applied to every channel alike (pooling, resizing).

    With ``spatial_axes``, only a batched input (batch, channels, *spatial) is narrowed:
    unbatched, axis 1 would be a spatial axis, which the operation does not treat alike.
    """

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_collapsed(x) or "out" in kwargs:
            return NotImplemented
        if spatial_axes is not None and x.dim() != spatial_axes + 2:
            return NotImplemented
        out = func(narrow_channel(x), *args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.dim() != x.dim():
            return NotImplemented
        return _widen(out, _with(out.shape, _CHANNEL, x.shape[_CHANNEL]))

    return run


def _with(shape: Sequence[int], dim: int, n: int) -> list[int]:
    out = list(shape)
    out[dim] = n
    return out


def _pad(x: Any, pad: Sequence[int], *args: Any, **kwargs: Any) -> Any:
    if not is_collapsed(x) or len(pad) // 2 > x.dim() - 2:
        return NotImplemented  # padding the channel (or batch) axis changes the width
    out = F.pad(narrow_channel(x), pad, *args, **kwargs)
    return _widen(out, _with(out.shape, _CHANNEL, x.shape[_CHANNEL]))


def _convolution(func: _Handler, transposed: bool) -> _Handler:
    """Convolution with a constant weight: every output channel sums the same inputs.

    With the weight ``w`` everywhere, output channel ``o`` is ``w`` times the windowed sum
    of its group's input channels: one single-channel convolution of the summed input (of
    one input channel times the group width, when the input is collapsed already).
    """
    names = (
        ("stride", "padding", "output_padding", "groups", "dilation")
        if transposed
        else ("stride", "padding", "dilation", "groups")
    )

    def run(x: Any, weight: Any, bias: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(x, torch.Tensor) and _constant(weight)) or x.dim() != weight.dim():
            return NotImplemented
        if bias is not None and not _constant(bias):
            return NotImplemented
        options = dict(zip(names, args, strict=False)) | kwargs
        groups = int(options.pop("groups", 1))
        group_width = x.shape[_CHANNEL] // groups
        out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
        expected_width = weight.shape[0] if transposed else weight.shape[1] * groups
        if x.shape[_CHANNEL] != expected_width or out_channels % groups:
            return NotImplemented  # a width mismatch: let PyTorch say so
        if bias is not None and tuple(bias.shape) != (out_channels,):
            return NotImplemented
        if is_collapsed(x):
            single, scale = narrow_channel(x), group_width
        elif groups == 1:
            single, scale = x.sum(_CHANNEL, keepdim=True), 1
        else:
            return NotImplemented
        out = func(single, _kernel(weight, scale), None, **options)
        if bias is not None:
            out = out + _value(bias)
        return _widen(out, _with(out.shape, _CHANNEL, out_channels))

    return run


def _linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """``F.linear`` with a constant weight: every output feature is the same sum."""
    if not (isinstance(x, torch.Tensor) and _constant(weight)) or weight.dim() != 2:
        return NotImplemented
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        return NotImplemented
    if bias is not None and (not _constant(bias) or tuple(bias.shape) != (weight.shape[0],)):
        return NotImplemented
    axes = _broadcast_axes(x)
    last = x.dim() - 1
    single = _cut(x, axes)
    if last in axes:
        out = single * (_value(weight) * x.shape[-1])
    else:
        out = single.sum(-1, keepdim=True) * _value(weight)
    if bias is not None:
        out = out + _value(bias)
    return _widen(out, _with(x.shape, last, weight.shape[0]))


def _reduction(func: _Handler, kind: str) -> _Handler:
    """``sum``/``mean``/``amax``/``amin`` of a broadcast tensor: on its cut entries, times
    the width of the summed broadcast axes for a sum."""

    def run(x: Any, dim: Any = None, keepdim: bool = False, **kwargs: Any) -> Any:
        axes = _broadcast_axes(x)
        if not axes or kwargs.get("out") is not None:
            return NotImplemented
        every = range(x.dim())
        if dim is None or dim == ():
            dims = set(every)
        elif isinstance(dim, int):
            dims = {dim % x.dim()}
        elif all(isinstance(d, int) for d in dim):
            dims = {d % x.dim() for d in dim}
        else:
            return NotImplemented  # named dimensions
        out = func(_cut(x, axes), tuple(sorted(dims)), keepdim, **kwargs)
        if kind == "sum":
            width = math.prod(x.shape[a] for a in axes if a in dims)
            out = out * width if width != 1 else out
        shape = list(out.shape)
        for a in axes:
            if a not in dims:
                shape[a if keepdim else a - sum(d < a for d in dims)] = x.shape[a]
        return _widen(out, shape)

    return run


def _matmul(func: _Handler) -> _Handler:
    """Matrix products ``(..., M, K) @ (..., K, N)``: batch axes both operands are broadcast
    along, rows of ``a`` and columns of ``b`` are cut; a ``K`` both are broadcast along is
    summed as ``K`` times one term."""

    def run(a: Any, b: Any, **kwargs: Any) -> Any:
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or kwargs:
            return NotImplemented
        if a.dim() < 2 or b.dim() < 2:
            return NotImplemented
        ndim = max(a.dim(), b.dim())
        batch_a, batch_b = a[..., :1, :1], b[..., :1, :1]
        axes = {d: n for d, n in _common_axes([batch_a, batch_b], ndim).items() if d < ndim - 2}
        cut_a = [d - (ndim - a.dim()) for d in axes if d - (ndim - a.dim()) >= 0]
        cut_b = [d - (ndim - b.dim()) for d in axes if d - (ndim - b.dim()) >= 0]
        wide_a, wide_b = set(_broadcast_axes(a)), set(_broadcast_axes(b))
        inner = a.dim() - 1 in wide_a and b.dim() - 2 in wide_b
        if inner:
            cut_a.append(a.dim() - 1)
            cut_b.append(b.dim() - 2)
        if a.dim() - 2 in wide_a:
            cut_a.append(a.dim() - 2)
            axes[ndim - 2] = a.shape[-2]
        if b.dim() - 1 in wide_b:
            cut_b.append(b.dim() - 1)
            axes[ndim - 1] = b.shape[-1]
        if not (cut_a or cut_b):
            return NotImplemented
        out = func(_cut(a, cut_a), _cut(b, cut_b))
        if inner:
            out = out * a.shape[-1]
        return _widened(out, axes, ndim)

    return run


def _cat(tensors: Any, dim: int = 0, **kwargs: Any) -> Any:
    """Concatenation of tensors broadcast along the same other axes stays broadcast."""
    parts = list(tensors)
    if not parts or kwargs.get("out") is not None or not any(_broadcast_axes(t) for t in parts):
        return NotImplemented
    ndim = parts[0].dim()
    if ndim == 0 or any(t.dim() != ndim for t in parts):
        return NotImplemented
    dim %= ndim
    axes = {a: n for a, n in _common_axes(parts, ndim).items() if a != dim}
    if not axes or any(any(t.shape[a] != n for t in parts) for a, n in axes.items()):
        return NotImplemented
    return _widened(torch.cat([_cut(t, axes) for t in parts], dim), axes, ndim)


def _in_place(func: _Handler) -> _Handler:
    """``x += y`` on a broadcast ``x``: write into its one stored entry.

    The broadcast entries share that memory, so all of them change, as they would in
    the full tensor. ``y`` must agree along those axes too; otherwise PyTorch refuses the
    write and the pass is run again without collapsing.
    """

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        axes = _broadcast_axes(x)
        if not axes or "out" in kwargs:
            return NotImplemented
        others = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(t.dim() > x.dim() for t in others):
            return NotImplemented
        if set(_common_axes([x, *others], x.dim())) & set(axes) != set(axes):
            return NotImplemented
        cut_args = [_cut_to(a, axes, x.dim()) for a in args]
        cut_kwargs = {k: _cut_to(v, axes, x.dim()) for k, v in kwargs.items()}
        func(_cut(x, axes), *cut_args, **cut_kwargs)
        return x

    return run


_ELEMENTWISE = (
    "add sub subtract mul multiply div divide true_divide neg abs square sqrt rsqrt exp "
    "reciprocal pow where masked_fill clamp clamp_min clamp_max clip isfinite isnan "
    "logical_not logical_and logical_or ge gt le lt eq ne greater_equal less_equal clone"
)
_DUNDERS = "add sub mul truediv radd rsub rmul rtruediv neg pow ge gt le lt eq ne invert and or"
_VIEWS = (
    "transpose swapaxes swapdims permute movedim unsqueeze squeeze expand expand_as unbind "
    "chunk split narrow select __getitem__"
)


def _handlers() -> dict[Any, _Handler]:
    handlers: dict[Any, _Handler] = {}
    owners: tuple[Any, ...] = (torch, torch.Tensor)
    for owner in owners:
        for name in _ELEMENTWISE.split():
            if (function := getattr(owner, name, None)) is not None:
                handlers[function] = _elementwise(function)
        for name in _VIEWS.split():
            if (function := getattr(owner, name, None)) is not None:
                handlers[function] = _view(function)
        for name in ("reshape", "flatten", "unflatten"):
            function = getattr(owner, name)
            handlers[function] = _reshape(function)
        for name in ("matmul", "bmm", "mm"):
            handlers[getattr(owner, name)] = _matmul(getattr(owner, name))
        handlers[owner.mean] = _reduction(owner.mean, "mean")
        handlers[owner.sum] = _reduction(owner.sum, "sum")
        handlers[owner.amax] = _reduction(owner.amax, "max")
        handlers[owner.amin] = _reduction(owner.amin, "max")
    handlers[torch.Tensor.view] = _reshape(torch.Tensor.view)
    handlers[torch.Tensor.to] = _elementwise(torch.Tensor.to)
    handlers[torch.Tensor.contiguous] = _contiguous
    handlers[torch.roll] = handlers[torch.Tensor.roll] = _roll
    handlers[torch.Tensor.__matmul__] = _matmul(torch.Tensor.__matmul__)
    for name in _DUNDERS.split():
        function = getattr(torch.Tensor, f"__{name}__")
        handlers[function] = _elementwise(function)
    for name in ("add_", "sub_", "subtract_", "mul_", "multiply_", "div_", "divide_"):
        handlers[getattr(torch.Tensor, name)] = _in_place(getattr(torch.Tensor, name))
    for name in ("iadd", "isub", "imul", "itruediv"):
        function = getattr(torch.Tensor, f"__{name}__")
        handlers[function] = _in_place(function)
    for dims in (1, 2, 3):
        for name in (f"avg_pool{dims}d", f"adaptive_avg_pool{dims}d", f"lp_pool{dims}d"):
            if (function := getattr(F, name, None)) is not None:
                handlers[function] = _channelwise(function, spatial_axes=dims)
        conv = getattr(F, f"conv{dims}d")
        handlers[conv] = _convolution(conv, transposed=False)
        transposed = getattr(F, f"conv_transpose{dims}d")
        handlers[transposed] = _convolution(transposed, transposed=True)
    handlers[F.interpolate] = _channelwise(F.interpolate)  # always (batch, channels, ...)
    handlers[F.pad] = _pad
    handlers[F.linear] = _linear
    handlers[torch.cat] = _cat
    handlers[torch.concat] = _cat
    return handlers


class ChannelCollapseMode(TorchFunctionMode):
    """Keep broadcast tensors at one entry along their broadcast axes (see module
    docstring).

    Enter it below :class:`~rfest_torch._linearize.LinearizedMode` so that the
    linearization's replacements (max pooling as a constant-weight convolution) are
    narrowed too.
    """

    handlers: dict[Any, _Handler] = _handlers()

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        handler = self.handlers.get(func)
        if handler is not None:
            result = handler(*args, **kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)
