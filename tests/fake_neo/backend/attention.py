"""Attention kernel with Forge Neo's calling convention.

Own re-implementation; mirrors backend/attention.py: attention_pytorch(q, k, v, heads, mask=None,
attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs) (Forge Neo 1fe65075):
q/k/v (B, L, heads*D), or (B, heads, L, D) with ``skip_reshape``; output (B, L, heads*D), or
(B, heads, L, D) with ``skip_output_reshape``; extra keywords (``transformer_options``) are accepted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


# mirrors backend/attention.py: attention_pytorch (Forge Neo 1fe65075)
def attention_pytorch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    attn_precision: torch.dtype | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


attention_function = attention_pytorch
attention_xformers = attention_pytorch
