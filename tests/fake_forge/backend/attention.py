"""Attention kernel with Forge's calling convention.

# mirrors backend/attention.py: attention_function(q, k, v, heads, mask=None, attn_precision=None,
# skip_reshape=False) (Forge dfdcbab6). Implemented with torch SDPA on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_pytorch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    attn_precision: torch.dtype | None = None,
    skip_reshape: bool = False,
) -> torch.Tensor:
    """q/k/v are [B, L, heads*D] (or [B, heads, L, D] with skip_reshape); returns [B, L, heads*D]."""
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.reshape(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 2:
        mask = mask[None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


attention_function = attention_pytorch
