"""Chroma's DiT as in Forge Neo: built from ``backend.nn.flux``'s blocks, so its joint attention goes
through ``backend.nn.flux.attention`` (text tokens first).

Own re-implementation; mirrors backend/nn/chroma.py: IntegratedChromaTransformer2DModel (Forge Neo,
index id 48593474237) in what DeGu depends on: the blocks are the flux module's, there is no pooled
vector and no guidance input (``forward(x, timestep, context, guidance=None, **kwargs)``). The
modulation approximator is not simulated (the simulated Flux DiT's own modulation, fed zeros, stands in).
"""

from __future__ import annotations

from typing import Any

import torch
from backend.nn.flux import IntegratedFluxTransformer2DModel


# mirrors backend/nn/chroma.py: IntegratedChromaTransformer2DModel (Forge Neo)
class IntegratedChromaTransformer2DModel(IntegratedFluxTransformer2DModel):
    def forward(  # type: ignore[override]
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, guidance: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        y = context.new_zeros((context.shape[0], self.vector_in.in_layer.in_features))
        return super().forward(x, timestep, context, y, None, **kwargs)


def tiny_chroma(seed: int = 0) -> IntegratedChromaTransformer2DModel:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = IntegratedChromaTransformer2DModel(
            in_channels=16,
            vec_in_dim=16,
            context_in_dim=32,
            hidden_size=32,
            mlp_ratio=4.0,
            num_heads=2,
            depth=2,
            depth_single_blocks=1,
            axes_dim=[4, 6, 6],
            theta=10000,
            qkv_bias=True,
            guidance_embed=False,
        )
    finally:
        torch.random.set_rng_state(state)
    return model.eval()
