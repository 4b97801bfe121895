"""An explicit cross-attention reference for tests: record each ``attn2`` call of a UNet, then compute
``softmax(q k^T / sqrt(d))`` head by head for one batch row, the way DESIGN.md §2 defines the map."""

from __future__ import annotations

import contextlib
import math

import torch

from lib_degu.attention import DEFAULT_DOWNSAMPLE_FACTORS, downsample_factor, find_cross_attention
from lib_degu.mask import resize


@contextlib.contextmanager
def recorded_cross_attention(unet: torch.nn.Module):
    """``with recorded_cross_attention(unet) as calls:`` - every attn2 call as (module, hidden, context)."""
    calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []

    def record(module, args, kwargs):
        calls.append((module, args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))

    handles = [
        attn.register_forward_pre_hook(record, with_kwargs=True) for _, attn in find_cross_attention(unet)
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def explicit_map(
    calls: list, row: int, positions: list[int], latent_hw: tuple[int, int], factors=DEFAULT_DOWNSAMPLE_FACTORS
) -> torch.Tensor:
    """(H, W) float64: batch row ``row``'s attention mass on the token ``positions``, per layer at the
    chosen downsample factors, resized to the latent and averaged over those layers."""
    height, width = latent_hw
    total, layers = torch.zeros(height, width, dtype=torch.float64), 0
    for attn, hidden, context in calls:
        factor = downsample_factor(latent_hw, hidden.shape[1])
        if factor not in factors:
            continue
        q, k = attn.to_q(hidden[row]).double(), attn.to_k(context[row]).double()
        d = q.shape[-1] // attn.heads
        heads = []
        for head in range(attn.heads):
            qh, kh = q[:, head * d : (head + 1) * d], k[:, head * d : (head + 1) * d]
            heads.append(torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)[:, positions].sum(dim=-1))
        small = torch.stack(heads).mean(dim=0).view(math.ceil(height / factor), math.ceil(width / factor))
        total += resize(small[None].float(), latent_hw)[0].double()
        layers += 1
    assert layers, "no cross-attention layer at the chosen factors"
    return total / layers


def sharpen_cross_attention(unet: torch.nn.Module, factor: float = 8.0) -> None:
    """Scale every attn2 query so the softmax is peaked: rows whose subject token differs then attend
    very differently (random weights alone attend almost uniformly)."""
    with torch.no_grad():
        for _, attn in find_cross_attention(unet):
            attn.to_q.weight.mul_(factor)
