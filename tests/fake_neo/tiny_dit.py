"""A tiny, seeded text-to-latent transformer standing in for Forge Neo's Anima and Wan networks (not a
mirror of any Neo file: their layouts were not simulated in detail; Qwen-Image and NextDiT have their
own fakes in backend/nn).

What matters to DeGu is kept: the text tokens and every latent position (any number of latent dims,
so Wan's frames too) meet in one joint attention computed with the network's own kernel (not
``backend.nn.flux.attention``: DeGu cannot read it and uses the difference mask);
``forward(x, timestep, context, transformer_options=..., **kwargs)``, output shaped like ``x``.
Every Linear runs one batch row at a time (tests/fake_forge/batch_invariance.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

LATENT_CHANNELS = 16
CONTEXT_DIM = 32


class TinyJointDiT(nn.Module):
    def __init__(
        self, channels: int = LATENT_CHANNELS, context_dim: int = CONTEXT_DIM, hidden: int = 32, heads: int = 2
    ):
        super().__init__()
        self.heads = heads
        self.img_in = nn.Linear(channels, hidden)
        self.txt_in = nn.Linear(context_dim, hidden)
        self.time_in = nn.Linear(32, hidden)
        self.qkv = nn.Linear(hidden, hidden * 3)
        self.proj = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden * 2), nn.GELU(), nn.Linear(hidden * 2, hidden))
        self.out = nn.Linear(hidden, channels)

    def _time(self, timestep: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(16, device=timestep.device) / 16)
        args = timestep.float()[:, None] * 1000.0 * freqs[None]
        return self.time_in(torch.cat([args.cos(), args.sin()], dim=-1))

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        transformer_options: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        batch, channels = x.shape[:2]
        img = self.img_in(x.flatten(2).transpose(1, 2)) + self._time(timestep)[:, None]
        txt = self.txt_in(context.to(img.dtype))
        tokens = torch.cat([txt, img], dim=1)
        q, k, v = self.qkv(tokens).view(batch, tokens.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, tokens.shape[1], -1)
        tokens = tokens + self.proj(attended)
        tokens = tokens + self.mlp(tokens)
        out = self.out(tokens[:, txt.shape[1] :])
        return out.transpose(1, 2).reshape(batch, channels, *x.shape[2:])


def tiny_joint_dit(seed: int = 0) -> TinyJointDiT:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = TinyJointDiT()
    finally:
        torch.random.set_rng_state(state)
    return model.eval()
