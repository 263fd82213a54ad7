"""Linearized products of two input-dependent factors, softmax and attention.

With activations linearized and positive constant weights, a product ``a * b`` of two
functions of the input squares magnitudes: sixteen squeeze-excite gates in a row go like
``x ** (2 ** 16)`` and attention like ``(N * sqrt(d)) ** (2 ** blocks)``, which underflows
to exactly 0 or overflows to inf even in float64. Only where the gradient is non-zero
matters, so a product is kept, with its product-rule gradient, but rescaled:

    a * b  ->  (a * sg(b) + sg(a) * b) / (2 * sg(max |a * b|))

(``sg``: no gradient). The value is ``a * b`` divided by a constant and the gradient is
``(b da + a db) / 2`` divided by the same constant, positive wherever the true product
rule is non-zero, and a factor that is identically zero (a masked attention weight) still
blocks the other one, as it does in the network. Magnitudes stay near 1 whatever the depth.
A product with only one input-dependent factor (a weight, a mask, a constant gate) is
linear and left alone. "Input-dependent" means "requires grad": in a linearized pass the
parameters are constants and only the probe input requires grad.

Softmax is linearized by its support: output ``j`` along ``dim`` depends on every input
along ``dim`` except those an additive mask pushed far below the row's maximum (``-inf``,
``finfo.min``, Swin's ``-100``; masked entries carry exactly zero, as ``exp`` makes them
negligible in the network), so it becomes the positive map
``(x_j + mean_kept(x)) / (2 * kept)`` on kept entries and 0 on masked ones.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rfest_torch._collapse import single_channel

__all__ = [
    "MASKED_BELOW",
    "bilinear",
    "linear_softmax",
    "products_table",
    "rescaled_matmul",
    "transparent",
]

MASKED_BELOW = 50.0
"""A softmax input this far below its row's maximum counts as masked (``exp(-50) ~ 2e-22``).

Linearized scores are rescaled products, of order 1, so only an additive mask reaches it.
"""

_Function = Callable[..., Any]


def _dependent(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()


def _scale(y: torch.Tensor) -> torch.Tensor:
    """``max |y|`` without gradient, 1 where that is 0 or not finite."""
    peak = single_channel(y.detach()).abs().amax() if y.numel() else y.new_ones(())
    return torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))


def _rescaled_product(
    function: _Function, factors: Sequence[Any], positions: Sequence[int], copy: bool = False
) -> torch.Tensor:
    """``function(*factors)`` with each input-dependent factor live in one term only.

    ``copy``: freeze factors as copies, for a result written back into one of them.
    """
    terms: list[torch.Tensor] = []
    for live in positions:
        frozen = [
            (f.detach().clone() if copy else f.detach()) if i in positions and i != live else f
            for i, f in enumerate(factors)
        ]
        terms.append(function(*frozen))
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total / (len(terms) * _scale(terms[0]))


def bilinear(original: _Function, in_place: bool = False) -> _Function:
    """``original(a, b, ...)`` (mul, matmul, bmm...) rescaled when both factors depend on x."""

    def product(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        if not (_dependent(a) and _dependent(b)) or "out" in kwargs:
            return original(a, b, *args, **kwargs)
        if in_place:  # mul_: the product out of place, written back
            return a.copy_(_rescaled_product(torch.mul, (a, b), (0, 1), copy=True))

        def call(p: Any, q: Any) -> Any:
            return original(p, q, *args, **kwargs)

        return _rescaled_product(call, (a, b), (0, 1))

    return product


def _einsum(equation: Any, *operands: Any) -> Any:
    if not isinstance(equation, str):
        return torch.einsum(equation, *operands)
    nested = len(operands) == 1 and isinstance(operands[0], (list, tuple))
    factors = list(operands[0]) if nested else list(operands)
    live = [i for i, f in enumerate(factors) if _dependent(f)]
    if len(live) < 2:
        return torch.einsum(equation, *factors)
    return _rescaled_product(lambda *fs: torch.einsum(equation, *fs), factors, live)


def _baddbmm(original: _Function) -> _Function:
    """``beta * input + alpha * b1 @ b2``: the mask or bias ``input`` is not rescaled."""

    def run(
        x: Any, batch1: Any, batch2: Any, *, beta: Any = 1, alpha: Any = 1, **kwargs: Any
    ) -> Any:
        if not (_dependent(batch1) and _dependent(batch2)) or kwargs:
            return original(x, batch1, batch2, beta=beta, alpha=alpha, **kwargs)
        product = _rescaled_product(torch.bmm, (batch1, batch2), (0, 1))
        return product * alpha if beta == 0 else beta * x + alpha * product

    return run


def _glu(x: Any, dim: int = -1) -> Any:
    a, b = x.chunk(2, dim)
    return _rescaled_product(torch.mul, (a, b), (0, 1)) if _dependent(x) else a * b


def _softmax_dim(x: torch.Tensor, dim: Any) -> int:
    if dim is not None:
        return int(dim)
    return 0 if x.dim() in (0, 1, 3) else 1  # PyTorch's legacy implicit dim


def linear_softmax(x: Any, dim: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Softmax (also log-softmax, softmin) by its support; see the module docstring."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    dtype = kwargs.get("dtype")
    if dtype is not None:
        x = x.to(dtype)
    if x.dim() == 0:
        return x.clone()
    d = _softmax_dim(x, dim)
    peak = x.detach().amax(d, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, math.inf)  # a row masked all through
    kept = x.detach() >= peak - MASKED_BELOW
    count = kept.sum(d, keepdim=True).clamp(min=1).to(x.dtype)
    zero = x.new_zeros(())
    values = torch.where(kept, x, zero)
    mean = values.sum(d, keepdim=True) / count
    return torch.where(kept, (values + mean) / (2 * count), zero)


def _attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    """``F.scaled_dot_product_attention`` written out, products rescaled, softmax linearized."""
    if enable_gqa and key.size(-3) != query.size(-3):
        repeat = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(repeat, -3)
        value = value.repeat_interleave(repeat, -3)
    factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = rescaled_matmul(query, key.transpose(-2, -1)) * factor
    if is_causal:
        causal = torch.ones(
            query.size(-2), key.size(-2), dtype=torch.bool, device=query.device
        ).tril()
        scores = scores.masked_fill(~causal, -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask
    return rescaled_matmul(linear_softmax(scores, -1), value)


def _dense_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Linearized q, k, v are often one value broadcast along the head dimension; matmul
    # is many times slower on such stride-0 operands than on a dense copy.
    return torch.matmul(a.contiguous(), b.contiguous())


rescaled_matmul = bilinear(_dense_matmul)
"""``a @ b``, rescaled when both factors depend on the input (see module docstring)."""


def transparent(function: _Function) -> _Function:
    """A copy of a Python composite (``F.multi_head_attention_forward``) that does not hand
    itself to the torch-function mode, so that the mode sees the calls it is made of."""
    assert isinstance(function, types.FunctionType)
    namespace = dict(function.__globals__)
    namespace["has_torch_function"] = lambda *args: False
    copy = types.FunctionType(
        function.__code__,
        namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


def products_table() -> dict[Any, _Function]:
    """Replacements for the linearized mode: products, softmax, attention."""
    table: dict[Any, _Function] = {}
    owners: tuple[Any, ...] = (torch, torch.Tensor)
    for owner in owners:
        for name in ("mul", "multiply", "matmul", "bmm", "mm"):
            table[getattr(owner, name)] = bilinear(getattr(owner, name))
        table[owner.baddbmm] = _baddbmm(owner.baddbmm)
        for name in ("softmax", "log_softmax"):
            table[getattr(owner, name)] = linear_softmax
    for name in ("__mul__", "__rmul__", "__matmul__", "__rmatmul__"):
        table[getattr(torch.Tensor, name)] = bilinear(getattr(torch.Tensor, name))
    for name in ("mul_", "multiply_", "__imul__"):
        table[getattr(torch.Tensor, name)] = bilinear(getattr(torch.Tensor, name), in_place=True)
    for name in ("softmax", "log_softmax", "softmin"):
        table[getattr(F, name)] = linear_softmax
    table[torch.einsum] = _einsum
    table[F.glu] = _glu
    table[F.scaled_dot_product_attention] = _attention
    return table
