"""A tiny, seeded Flux-layout DiT built from the fake ``backend.nn.flux`` (call after ``harness.install()``).

Same architecture and attribute names as Forge's IntegratedFluxTransformer2DModel (backend/nn/flux.py):
``double_blocks`` (image + text streams with one joint attention, text tokens first), ``single_blocks``,
2x2-patchified latents, ``guidance`` embedding, ``forward(x, timestep, context, y, guidance=None, **kwargs)``.
Tiny: 16 latent channels, hidden 32, 2 heads (head dim 16, rope axes 4+6+6), 2 double blocks, 1 single block,
context width 32 (T5), pooled width 16 (CLIP-L).
"""

from __future__ import annotations

from typing import Any

import torch

LATENT_CHANNELS = 16
CONTEXT_DIM = 32
POOLED_DIM = 16


def tiny_flux(seed: int = 0, depth: int = 2, depth_single_blocks: int = 1, guidance_embed: bool = True) -> Any:
    from backend.nn.flux import IntegratedFluxTransformer2DModel

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = IntegratedFluxTransformer2DModel(
            in_channels=LATENT_CHANNELS,
            vec_in_dim=POOLED_DIM,
            context_in_dim=CONTEXT_DIM,
            hidden_size=32,
            mlp_ratio=4.0,
            num_heads=2,
            depth=depth,
            depth_single_blocks=depth_single_blocks,
            axes_dim=[4, 6, 6],
            theta=10000,
            qkv_bias=True,
            guidance_embed=guidance_embed,
        )
    finally:
        torch.random.set_rng_state(state)
    return model.eval()
