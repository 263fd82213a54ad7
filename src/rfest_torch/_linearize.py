"""Linearization of any PyTorch forward pass, modules and functional calls alike.

A :class:`~torch.overrides.TorchFunctionMode` sees every torch function a forward pass
calls, whether through ``nn.ReLU``, ``F.relu``, ``torch.relu_`` or ``x.relu()``, so no
module is swapped and the model is not copied. The parameters are replaced separately
(``torch.func.functional_call``), see :mod:`rfest_torch._provider`.

- pointwise nonlinearities and normalisation act as identity;
- products of two input-dependent factors (gates, attention) are rescaled and softmax
  acts through its support (:mod:`rfest_torch._products`); the Python composite
  ``F.multi_head_attention_forward`` is run written out so that the mode sees its parts
  (:mod:`rfest_torch._attention`);
- max pooling (also adaptive, also ``torch.max``/``amax`` reductions) acts as average
  pooling of the same window; elementwise ``maximum``/``minimum`` act as the mean;
- dropout acts as identity (the real model's dropout is random).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from rfest_torch._attention import multi_head_attention
from rfest_torch._products import products_table, transparent

__all__ = ["EvalMode", "LinearizedMode"]

_Replacement = Callable[..., Any]

_IDENTITY = {
    F: (
        "relu relu_ relu6 elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ gelu silu "
        "mish hardswish hardsigmoid hardtanh hardtanh_ sigmoid tanh softplus softsign "
        "logsigmoid tanhshrink softshrink hardshrink threshold threshold_ rrelu rrelu_ "
        "prelu normalize batch_norm instance_norm layer_norm "
        "group_norm local_response_norm rms_norm"
    ),
    torch: (
        "relu relu_ sigmoid sigmoid_ tanh tanh_ clamp clamp_ clip clip_ clamp_min "
        "clamp_min_ clamp_max clamp_max_ selu selu_ celu celu_ rrelu rrelu_ prelu "
        "hardshrink batch_norm instance_norm layer_norm group_norm rms_norm"
    ),
    torch.Tensor: (
        "relu relu_ sigmoid sigmoid_ tanh tanh_ clamp clamp_ clip clip_ clamp_min "
        "clamp_min_ clamp_max clamp_max_ hardshrink"
    ),
}

_DROPOUT = {
    F: "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout",
    torch: "dropout dropout_ alpha_dropout alpha_dropout_ feature_dropout feature_alpha_dropout",
}


def _functions(table: dict[Any, str]) -> Iterable[tuple[str, Any]]:
    for owner, names in table.items():
        for name in names.split():
            function = getattr(owner, name, None)
            if function is not None:
                yield name, function


def _identity(name: str) -> _Replacement:
    in_place = name.endswith("_")

    def identity(x: Any, *args: Any, **kwargs: Any) -> Any:
        if in_place or kwargs.get("inplace", False):
            return x
        return x.clone()

    return identity


def _as_tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    return values * dims if len(values) == 1 else values


def _max_pool_as_average(dims: int, original: Callable[..., Any]) -> _Replacement:
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]

    def average(
        x: torch.Tensor,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        ceil_mode: bool = False,
        return_indices: bool = False,
    ) -> Any:
        if not x.is_floating_point():
            return original(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        kernel = _as_tuple(kernel_size, dims)
        steps = _as_tuple(stride if stride else kernel_size, dims)
        pads = _as_tuple(padding, dims)
        dilations = _as_tuple(dilation, dims)
        unbatched = x.dim() == dims + 1
        batch = x.unsqueeze(0) if unbatched else x
        spatial = batch.shape[2:]
        extra = [
            _ceil_mode_extra(n, k, s, p, d) if ceil_mode else 0
            for n, k, s, p, d in zip(spatial, kernel, steps, pads, dilations, strict=True)
        ]
        pad_arg: list[int] = []
        for p, e in zip(reversed(pads), reversed(extra), strict=True):
            pad_arg += [p, p + e]
        channels = batch.shape[1]
        weight = torch.full(
            (), 1.0 / math.prod(kernel), dtype=batch.dtype, device=batch.device
        ).expand(channels, 1, *kernel)
        out = conv(F.pad(batch, pad_arg), weight, stride=steps, dilation=dilations, groups=channels)
        out = out.squeeze(0) if unbatched else out
        if return_indices:
            _, indices = original(x, kernel_size, stride, padding, dilation, ceil_mode, True)
            return out, indices
        return out

    return average


def _ceil_mode_extra(n: int, k: int, s: int, p: int, d: int) -> int:
    """Extra padding at the end that makes a floor-mode window count match ceil_mode."""
    span = d * (k - 1) + 1
    count = -(-(n + 2 * p - span) // s) + 1
    if (count - 1) * s >= n + p:
        count -= 1
    return max(0, (count - 1) * s + span - (n + 2 * p))


def _adaptive_max_as_average(dims: int, original: Callable[..., Any]) -> _Replacement:
    average = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 1]

    def adaptive(x: torch.Tensor, output_size: Any, return_indices: bool = False) -> Any:
        if not x.is_floating_point():
            return original(x, output_size, return_indices)
        out = average(x, output_size)
        if return_indices:
            return out, original(x, output_size, True)[1]
        return out

    return adaptive


def _max_reduction_as_mean(original: Callable[..., Any]) -> _Replacement:
    """``max``/``min`` as mean: binary form elementwise, ``dim`` form with real indices."""

    def mean(x: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return original(x, *args, **kwargs)
        other = args[0] if args else kwargs.get("other", kwargs.get("dim"))
        if isinstance(other, torch.Tensor):
            return (x + other) / 2
        if other is None:
            return x.mean()
        keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
        values = x.mean(dim=other, keepdim=keepdim)
        indices = original(x, *args, **kwargs).indices
        return torch.return_types.max((values, indices))

    return mean


def _amax_as_mean(original: Callable[..., Any]) -> _Replacement:
    def mean(x: Any, dim: Any = (), keepdim: bool = False, **kwargs: Any) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return original(x, dim, keepdim, **kwargs)
        return x.mean(dim=dim if dim != () else None, keepdim=keepdim)

    return mean


def _pairwise_mean(x: Any, other: Any, *args: Any, **kwargs: Any) -> Any:
    return (x + other) / 2


def _linearized_table() -> dict[Any, _Replacement]:
    table: dict[Any, _Replacement] = {}
    for name, function in _functions(_IDENTITY):
        table[function] = _identity(name)
    for name, function in _functions(_DROPOUT):
        table[function] = _identity(name)
    for dims in (1, 2, 3):
        for owner, name in ((F, f"max_pool{dims}d"), (torch, f"max_pool{dims}d")):
            if (function := getattr(owner, name, None)) is not None:
                table[function] = _max_pool_as_average(dims, function)
        with_indices = getattr(F, f"max_pool{dims}d_with_indices")
        table[with_indices] = _max_pool_as_average(dims, with_indices)
        for name in (f"adaptive_max_pool{dims}d", f"adaptive_max_pool{dims}d_with_indices"):
            function = getattr(F, name)
            table[function] = _adaptive_max_as_average(dims, function)
    owners: tuple[Any, ...] = (torch, torch.Tensor)
    for owner in owners:
        for name in ("max", "min"):
            function = getattr(owner, name)
            table[function] = _max_reduction_as_mean(function)
        for name in ("amax", "amin"):
            function = getattr(owner, name)
            table[function] = _amax_as_mean(function)
        for name in ("maximum", "minimum", "fmax", "fmin"):
            table[getattr(owner, name)] = _pairwise_mean
    table.update(products_table())
    return table


def _eval_table() -> dict[Any, _Replacement]:
    table: dict[Any, _Replacement] = {}
    for name, function in _functions(_DROPOUT):
        table[function] = _identity(name)

    def batch_norm_inference(x: Any, *args: Any, **kwargs: Any) -> Any:
        names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        bound = dict(zip(names, args, strict=False)) | kwargs
        if bound.get("running_mean") is not None:
            bound["training"] = False
        return F.batch_norm(x, **bound)

    table[F.batch_norm] = batch_norm_inference

    def attention_without_dropout(*args: Any, **kwargs: Any) -> Any:
        names = ("query", "key", "value", "attn_mask", "dropout_p")
        bound = dict(zip(names, args, strict=False)) | kwargs
        return F.scaled_dot_product_attention(**(bound | {"dropout_p": 0.0}))

    def multi_head_attention_inference(*args: Any, **kwargs: Any) -> Any:
        return F.multi_head_attention_forward(*args, **(kwargs | {"training": False}))

    table[F.scaled_dot_product_attention] = attention_without_dropout
    table[F.multi_head_attention_forward] = multi_head_attention_inference
    return table


class _ReplacingMode(TorchFunctionMode):
    table: ClassVar[dict[Any, _Replacement]] = {}

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        replacement = self.table.get(func, func)
        return replacement(*args, **(kwargs or {}))


class LinearizedMode(_ReplacingMode):
    """Run a forward pass as its linearized counterpart (see module docstring)."""

    table: ClassVar[dict[Any, _Replacement]] = _linearized_table()
    composites: ClassVar[dict[Any, _Replacement]] = {
        F.multi_head_attention_forward: transparent(F.multi_head_attention_forward)
    }
    written_out: ClassVar[dict[Any, Callable[[_Replacement], _Replacement]]] = {
        F.multi_head_attention_forward: multi_head_attention
    }

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        composite = self.composites.get(func)
        if composite is None:
            return super().__torch_function__(func, types, args, kwargs)

        def parts(*args: Any, **kwargs: Any) -> Any:
            with self:  # the mode is off while it handles a call: back on for the parts
                return composite(*args, **kwargs)

        written = self.written_out.get(func)
        run = parts if written is None else written(parts)  # runs with the mode off
        return run(*args, **(kwargs or {}))


class EvalMode(_ReplacingMode):
    """Run a forward pass as in ``eval()`` without touching the modules' training flags."""

    table: ClassVar[dict[Any, _Replacement]] = _eval_table()
