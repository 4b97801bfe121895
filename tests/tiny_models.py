"""Tiny random-weight models with real architectures, built in the test (no downloads)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

CONTEXT_DIM = 32


def tiny_unet(seed: int = 0, in_channels: int = 4, **extra: object) -> UNet2DConditionModel:
    """diffusers' SD-style UNet (down/mid/up blocks with attn1/attn2 transformer blocks), tiny.

    Attention sits at downsample factors 1, 2 and 4 (the mid block), like SD1.x's levels. ``extra``
    goes to the constructor (e.g. a projected class embedding for SDXL's ``vector``); ``in_channels``
    9 makes an inpainting UNet (latent + mask + masked-image latent, 4 output channels).
    """
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
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


# The MM-DiT layouts of the real hosts, small: depth 6 (real: 24 or 38), head dim 8 (real: 64), so
# the chosen middle quarter (rounded) is blocks 2-3 and blocks 0-1 and 4-5 lie outside it.
MMDIT_DEPTH = 6
MMDIT_HEAD_DIM = 8
SD35_VARIANTS = ("large", "medium")


def _seeded(build):  # noqa: ANN001, ANN202
    def make(seed: int = 0, **kwargs: object) -> torch.nn.Module:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return build(**kwargs).eval()
        finally:
            torch.random.set_rng_state(state)

    make.__doc__ = build.__doc__
    return make


@_seeded
def tiny_sd3_mmdit(context_dim: int = CONTEXT_DIM, pooled_dim: int = 16, depth: int = MMDIT_DEPTH) -> torch.nn.Module:
    """A1111 1.10.1's SD3-medium MM-DiT (fake ``modules.models.sd3.mmdit.MMDiT``: no q/k norm, no
    MMDiT-X blocks), as ``sd3_impls.BaseModel`` builds it; the fake A1111 must be installed."""
    from modules.models.sd3.mmdit import MMDiT

    hidden = MMDIT_HEAD_DIM * depth
    return MMDiT(
        patch_size=2, in_channels=16, depth=depth, adm_in_channels=pooled_dim, pos_embed_max_size=16,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": context_dim,
                                                                          "out_features": hidden}},
        head_dim=MMDIT_HEAD_DIM,
    )


@_seeded
def tiny_sd35_mmditx(variant: str = "large", context_dim: int = CONTEXT_DIM, pooled_dim: int = 32,
                     depth: int = MMDIT_DEPTH) -> torch.nn.Module:
    """Forge's SD3.5 MMDiT-X (fake ``backend.nn.mmditx.MMDiTX``, q/k RMSNorm). ``"medium"``: MMDiT-X
    ``attn2`` in the first 13/24 of the blocks (real: 0-12 of 24; here 0-3 of 6, so in the chosen
    middle blocks too); ``"large"``: none. The fake Forge must be installed."""
    from backend.nn.mmditx import MMDiTX

    if variant not in SD35_VARIANTS:
        raise ValueError(variant)
    hidden = MMDIT_HEAD_DIM * depth
    return MMDiTX(
        patch_size=2, in_channels=16, depth=depth, adm_in_channels=pooled_dim, pos_embed_max_size=16,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": context_dim,
                                                                          "out_features": hidden}},
        qk_norm="rms", x_block_self_attn_layers=list(range(round(depth * 13 / 24))) if variant == "medium" else [],
        head_dim=MMDIT_HEAD_DIM,
    )
