"""``F.multi_head_attention_forward`` written out with head splits that keep broadcasts.

PyTorch's composite folds the heads into the batch axis (``(T, N * heads, d)``), a
reshape that mixes the batch with the heads, which are one value broadcast in a
linearized pass (constant weights): the channel collapse (:mod:`rfest_torch._collapse`)
would have to store every head. Here the heads get an axis of their own,
``(N, heads, T, d)``, and the scores go through ``F.scaled_dot_product_attention`` (the
linearized one of :mod:`rfest_torch._products`). The same function of the inputs;
options this does not write out (``bias_k``, ``add_zero_attn``, static keys, unbatched
inputs) run PyTorch's composite.

It runs with the linearizing mode off (its products and softmax are the linearized ones
already, called directly), so only the channel collapse sees its parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from rfest_torch._products import linear_softmax, rescaled_matmul

__all__ = ["multi_head_attention"]


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as ``-inf``; a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
    return mask.to(dtype)


def multi_head_attention(composite: Callable[..., Any]) -> Callable[..., Any]:
    """``F.multi_head_attention_forward``, heads on an axis of their own (see module
    docstring); ``composite`` runs what it does not write out."""

    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        embed_dim_to_check: int,
        num_heads: int,
        in_proj_weight: torch.Tensor | None,
        in_proj_bias: torch.Tensor | None,
        bias_k: torch.Tensor | None,
        bias_v: torch.Tensor | None,
        add_zero_attn: bool,
        dropout_p: float,
        out_proj_weight: torch.Tensor,
        out_proj_bias: torch.Tensor | None,
        training: bool = True,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        use_separate_proj_weight: bool = False,
        q_proj_weight: torch.Tensor | None = None,
        k_proj_weight: torch.Tensor | None = None,
        v_proj_weight: torch.Tensor | None = None,
        static_k: torch.Tensor | None = None,
        static_v: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t, n, e = query.shape if query.dim() == 3 else (0, 0, 0)
        heads = num_heads
        plain = (
            query.dim() != 3
            or e != embed_dim_to_check
            or e % heads
            or bias_k is not None
            or bias_v is not None
            or add_zero_attn
            or static_k is not None
            or static_v is not None
            or (is_causal and attn_mask is None)
            or (not use_separate_proj_weight and in_proj_weight is None)
            or (
                use_separate_proj_weight
                and any(w is None for w in (q_proj_weight, k_proj_weight, v_proj_weight))
            )
        )
        if plain:
            return composite(  # type: ignore[no-any-return]
                query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
                in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight,
                out_proj_bias, training, key_padding_mask, need_weights, attn_mask,
                use_separate_proj_weight, q_proj_weight, k_proj_weight, v_proj_weight,
                static_k, static_v, average_attn_weights, is_causal,
            )  # fmt: skip
        weights: tuple[Any, ...]
        if use_separate_proj_weight:
            weights = (q_proj_weight, k_proj_weight, v_proj_weight)
        else:
            assert in_proj_weight is not None
            weights = tuple(in_proj_weight.chunk(3))
        biases = (None,) * 3 if in_proj_bias is None else tuple(in_proj_bias.chunk(3))
        q, k, v = (
            F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True)
        )
        s = key.shape[0]
        d = e // heads
        q, k, v = (x.reshape(x.shape[0], n, heads, d).permute(1, 2, 0, 3) for x in (q, k, v))
        mask = _additive(attn_mask, q.dtype)
        if mask is not None:
            mask = mask.reshape(1, 1, t, s) if mask.dim() == 2 else mask.reshape(n, heads, t, s)
        padding = _additive(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.reshape(n, 1, 1, s)
            mask = padding if mask is None else mask + padding
        scores = rescaled_matmul(q, k.transpose(-2, -1)) * (1 / math.sqrt(d))
        if mask is not None:
            scores = scores + mask
        attention = linear_softmax(scores, -1)
        out = rescaled_matmul(attention, v).permute(2, 0, 1, 3).reshape(t, n, e)
        out = F.linear(out, out_proj_weight, out_proj_bias)
        if not need_weights:
            return out, None
        return out, attention.mean(1) if average_attn_weights else attention

    return forward
