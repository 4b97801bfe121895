"""Tiny random-weight models with real architectures, built in the test (no downloads)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

CONTEXT_DIM = 32


def tiny_unet(seed: int = 0, **extra: object) -> UNet2DConditionModel:
    """diffusers' SD-style UNet (down/mid/up blocks with attn1/attn2 transformer blocks), tiny.

    Attention sits at downsample factors 1, 2 and 4 (the mid block), like SD1.x's levels. ``extra``
    goes to the constructor (e.g. a projected class embedding for SDXL's ``vector``).
    """
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
        **extra,
    ).eval()
