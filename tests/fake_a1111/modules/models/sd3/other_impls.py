"""Own re-implementation of the two pieces of modules/models/sd3/other_impls.py (A1111 1.10.1, 82a973c0)
that ``mmdit.py`` imports: ``attention`` and ``Mlp``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


# mirrors modules/models/sd3/other_impls.py: attention (A1111 1.10.1)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Any = None) -> torch.Tensor:
    b, _, dim_head = q.shape
    dim_head //= heads
    q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


# mirrors modules/models/sd3/other_impls.py: Mlp (A1111 1.10.1)
class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, act_layer: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
