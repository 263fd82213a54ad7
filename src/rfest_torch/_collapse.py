"""Channel collapse: run a linearized forward pass on one channel where all channels agree.

Linearized, every weight of a layer is the same constant (see
:mod:`rfest_torch._provider`), so a convolution's output channels all hold the same
values, and so does everything computed from them channel by channel. Such a tensor is
kept as one channel broadcast to the full width (channel stride 0): its shape and values
are exactly those of the full tensor, but convolutions, pooling and arithmetic run on a
single channel. A ResNet-50 pass then costs about as much as a one-channel network.

Only operations known to treat channels alike are narrowed; any other operation receives
the broadcast tensor as an ordinary tensor (its values are the true values), so results
never change, only their cost. In-place writes into a broadcast tensor raise in PyTorch;
the provider then runs the pass again without collapsing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def single_channel(x: torch.Tensor) -> torch.Tensor:
    """The one stored channel of a collapsed tensor (same values up to broadcasting), else x."""
    return _narrow(x) if is_collapsed(x) else x


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


def _narrow(x: torch.Tensor) -> torch.Tensor:
    """The one stored channel of a collapsed tensor.

    The channel a tensor was widened from is used as it is: taking it back out of the
    broadcast view would cost a full-width gradient buffer in the backward pass.
    """
    single = getattr(x, _SINGLE, None)
    return single if single is not None else x.narrow(_CHANNEL, 0, 1)


def narrow_channel(x: torch.Tensor) -> torch.Tensor:
    """The one stored channel ``(N, 1, *spatial)`` of a collapsed tensor, in its graph."""
    return _narrow(x)


def _narrow_at(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with its axis ``dim`` (which agrees across its entries) cut to one entry."""
    if dim < 0 or x.shape[dim] == 1:
        return x
    return _narrow(x) if dim == _CHANNEL else x.narrow(dim, 0, 1)


def _widen(x: torch.Tensor, channels: int, dim: int = _CHANNEL) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = channels
    wide = x.expand(shape)
    if dim == _CHANNEL:
        setattr(wide, _SINGLE, x)
    return wide


def _channel_widths(tensors: Sequence[torch.Tensor], ndim: int) -> set[int] | None:
    """Widths of the broadcast channel axis (axis 1 of an ``ndim``-axis result) among
    ``tensors``; None when one of them spans that axis without agreeing across it."""
    widths = set()
    for t in tensors:
        dim = _CHANNEL - (ndim - t.dim())
        if dim >= 0 and t.shape[dim] > 1:
            if t.stride(dim) != 0:
                return None
            widths.add(t.shape[dim])
    return widths


def _narrowed(
    args: tuple[Any, ...], kwargs: dict[str, Any], ndim: int
) -> tuple[list[Any], dict[str, Any]]:
    """The arguments with every tensor cut to one entry along the broadcast channel axis."""

    def narrow(a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        return _narrow_at(a, _CHANNEL - (ndim - a.dim()))

    return [narrow(a) for a in args], {k: narrow(v) for k, v in kwargs.items()}


def _elementwise(func: _Handler) -> _Handler:
    """Broadcasting arithmetic: narrow when every tensor argument agrees across channels."""

    def run(*args: Any, **kwargs: Any) -> Any:
        if "out" in kwargs:
            return NotImplemented
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not any(is_collapsed(t) for t in tensors):
            return NotImplemented
        ndim = max(t.dim() for t in tensors)
        widths = _channel_widths(tensors, ndim)
        if widths is None or len(widths) != 1:
            return NotImplemented  # mixed channels, or not broadcastable: PyTorch decides
        (channels,) = widths
        narrow_args, narrow_kwargs = _narrowed(args, kwargs, ndim)
        out = func(*narrow_args, **narrow_kwargs)
        if not isinstance(out, torch.Tensor) or out.dim() != ndim:
            return NotImplemented
        return _widen(out, channels)

    return run


def _channelwise(func: _Handler, spatial_axes: int | None = None) -> _Handler:
    """An operation applied to every channel alike (pooling, resizing, copying).

    With ``spatial_axes``, only a batched input (batch, channels, *spatial) is narrowed:
    unbatched, axis 1 would be a spatial axis, which the operation does not treat alike.
    """

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_collapsed(x) or "out" in kwargs:
            return NotImplemented
        if spatial_axes is not None and x.dim() != spatial_axes + 2:
            return NotImplemented
        out = func(_narrow(x), *args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.dim() != x.dim():
            return NotImplemented
        return _widen(out, x.shape[_CHANNEL])

    return run


def _pad(x: Any, pad: Sequence[int], *args: Any, **kwargs: Any) -> Any:
    if not is_collapsed(x) or len(pad) // 2 > x.dim() - 2:
        return NotImplemented  # padding the channel (or batch) axis changes the width
    return _widen(F.pad(_narrow(x), pad, *args, **kwargs), x.shape[_CHANNEL])


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
            single, scale = _narrow(x), group_width
        elif groups == 1:
            single, scale = x.sum(_CHANNEL, keepdim=True), 1
        else:
            return NotImplemented
        out = func(single, _kernel(weight, scale), None, **options)
        if bias is not None:
            out = out + _value(bias)
        return _widen(out, out_channels)

    return run


def _linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """``F.linear`` with a constant weight: every output feature is the same sum."""
    if not (isinstance(x, torch.Tensor) and _constant(weight)) or weight.dim() != 2:
        return NotImplemented
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        return NotImplemented
    if bias is not None and (not _constant(bias) or tuple(bias.shape) != (weight.shape[0],)):
        return NotImplemented
    out = x.sum(-1, keepdim=True) * _value(weight)
    if bias is not None:
        out = out + _value(bias)
    return _widen(out, weight.shape[0], dim=-1)


def _reduction(func: _Handler, is_sum: bool) -> _Handler:
    """``mean``/``sum`` of a collapsed tensor over axes that keep the batch axis."""

    def run(x: Any, dim: Any = None, keepdim: bool = False, **kwargs: Any) -> Any:
        if not is_collapsed(x) or dim is None or kwargs.get("out") is not None:
            return NotImplemented
        dims = {d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}
        if not dims or 0 in dims:
            return NotImplemented
        out = func(_narrow(x), tuple(dims), keepdim, **kwargs)
        if _CHANNEL in dims:
            return out * x.shape[_CHANNEL] if is_sum else out
        return _widen(out, x.shape[_CHANNEL])

    return run


def _cat(tensors: Any, dim: int = 0, **kwargs: Any) -> Any:
    """Concatenation along a spatial axis of collapsed tensors stays collapsed."""
    parts = list(tensors)
    if not parts or kwargs.get("out") is not None or not all(is_collapsed(t) for t in parts):
        return NotImplemented
    ndim = parts[0].dim()
    if dim % ndim in (0, _CHANNEL) or any(t.dim() != ndim for t in parts):
        return NotImplemented
    if len({t.shape[_CHANNEL] for t in parts}) != 1:
        return NotImplemented
    return _widen(torch.cat([_narrow(t) for t in parts], dim), parts[0].shape[_CHANNEL])


def _in_place(func: _Handler) -> _Handler:
    """``x += y`` on a collapsed ``x``: write into its one stored channel.

    The broadcast channels share that memory, so all of them change, as they would in
    the full tensor. ``y`` must agree across channels too; otherwise PyTorch refuses the
    write and the pass is run again without collapsing.
    """

    def run(x: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_collapsed(x) or "out" in kwargs:
            return NotImplemented
        others = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(t.dim() > x.dim() for t in others):
            return NotImplemented
        widths = _channel_widths(others, x.dim())
        if widths is None or not widths <= {x.shape[_CHANNEL]}:
            return NotImplemented
        narrow_args, narrow_kwargs = _narrowed(args, kwargs, x.dim())
        func(_narrow(x), *narrow_args, **narrow_kwargs)
        return x

    return run


def _handlers() -> dict[Any, _Handler]:
    handlers: dict[Any, _Handler] = {}
    arithmetic = "add sub subtract mul multiply div divide true_divide"
    for name in f"{arithmetic} neg abs square sqrt exp reciprocal".split():
        for owner in (torch, torch.Tensor):
            function = getattr(owner, name)
            handlers[function] = _elementwise(function)
    for name in ("add", "sub", "mul", "truediv", "radd", "rsub", "rmul", "rtruediv", "neg"):
        function = getattr(torch.Tensor, f"__{name}__")
        handlers[function] = _elementwise(function)
    for name in ("add_", "sub_", "subtract_", "mul_", "multiply_", "div_", "divide_"):
        handlers[getattr(torch.Tensor, name)] = _in_place(getattr(torch.Tensor, name))
    for name in ("iadd", "isub", "imul", "itruediv"):
        function = getattr(torch.Tensor, f"__{name}__")
        handlers[function] = _in_place(function)
    handlers[torch.Tensor.clone] = _channelwise(torch.Tensor.clone)
    handlers[torch.clone] = _channelwise(torch.clone)
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
    for owner in (torch, torch.Tensor):
        handlers[owner.mean] = _reduction(owner.mean, is_sum=False)
        handlers[owner.sum] = _reduction(owner.sum, is_sum=True)
    return handlers


class ChannelCollapseMode(TorchFunctionMode):
    """Keep channel-uniform tensors at one channel (see module docstring).

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
