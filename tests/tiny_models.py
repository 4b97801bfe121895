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


class _JointBlock(torch.nn.Module):
    """One MM-DiT block: context and image streams with their own adaLN, qkv, projection and MLP,
    one softmax attention over the joined tokens (context first)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.streams = torch.nn.ModuleList()
        for _ in range(2):
            stream = torch.nn.Module()
            stream.modulation = torch.nn.Linear(hidden, 6 * hidden)
            stream.qkv = torch.nn.Linear(hidden, 3 * hidden)
            stream.proj = torch.nn.Linear(hidden, hidden)
            stream.mlp = torch.nn.Sequential(
                torch.nn.Linear(hidden, 2 * hidden), torch.nn.GELU(), torch.nn.Linear(2 * hidden, hidden)
            )
            self.streams.append(stream)

    def forward(self, context: torch.Tensor, image: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norm = torch.nn.functional.layer_norm
        tokens, mods, qkvs = [context, image], [], []
        for stream, x in zip(self.streams, tokens, strict=True):
            mod = stream.modulation(torch.nn.functional.silu(c))[:, None].chunk(6, dim=-1)
            mods.append(mod)
            qkvs.append(stream.qkv(norm(x, x.shape[-1:]) * (1 + mod[1]) + mod[0]))
        batch, hidden = image.shape[0], image.shape[-1]
        joint = torch.cat(qkvs, dim=1).view(batch, -1, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        attended = torch.nn.functional.scaled_dot_product_attention(joint[0], joint[1], joint[2])
        attended = attended.transpose(1, 2).reshape(batch, -1, hidden).split([context.shape[1], image.shape[1]], 1)
        out = []
        for stream, x, mod, a in zip(self.streams, tokens, mods, attended, strict=True):
            x = x + mod[2] * stream.proj(a)
            out.append(x + mod[5] * stream.mlp(norm(x, x.shape[-1:]) * (1 + mod[4]) + mod[3]))
        return out[0], out[1]


class TinyMMDiT(torch.nn.Module):
    """SD3's MM-DiT layout, tiny: 2x2 patches, joint attention blocks (no cross-attention modules),
    adaLN conditioning on the timestep and the pooled text vector; ``forward(x, t, context, y)`` (a host's
    further keywords, e.g. Forge's ``control`` and ``transformer_options``, are ignored like its MM-DiT does)."""

    def __init__(self, in_channels: int = 16, hidden: int = 32, heads: int = 2, depth: int = 2,
                 context_dim: int = CONTEXT_DIM, pooled_dim: int = 16, patch: int = 2) -> None:
        super().__init__()
        self.patch, self.hidden = patch, hidden
        self.x_embedder = torch.nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.context_embedder = torch.nn.Linear(context_dim, hidden)
        self.t_embedder = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden)
        )
        self.y_embedder = torch.nn.Linear(pooled_dim, hidden)
        self.joint_blocks = torch.nn.ModuleList([_JointBlock(hidden, heads) for _ in range(depth)])
        self.final_modulation = torch.nn.Linear(hidden, 2 * hidden)
        self.final = torch.nn.Linear(hidden, patch * patch * in_channels)

    def _sincos(self, values: torch.Tensor, dim: int) -> torch.Tensor:
        frequencies = torch.exp(-torch.arange(dim // 2, dtype=torch.float32) * (4.0 / (dim // 2))).to(values)
        angles = values.float()[..., None] * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor, **host: object
    ) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch
        image = self.x_embedder(x).flatten(2).transpose(1, 2)
        rows = torch.arange(height // p, device=x.device).repeat_interleave(width // p)
        cols = torch.arange(width // p, device=x.device).repeat(height // p)
        image = image + torch.cat([self._sincos(rows, self.hidden // 2), self._sincos(cols, self.hidden // 2)], -1)
        c = self.t_embedder(self._sincos(t.reshape(-1) / 10, self.hidden)) + self.y_embedder(y)
        context = self.context_embedder(context)
        for block in self.joint_blocks:
            context, image = block(context, image, c)
        shift, scale = self.final_modulation(torch.nn.functional.silu(c))[:, None].chunk(2, dim=-1)
        out = self.final(torch.nn.functional.layer_norm(image, image.shape[-1:]) * (1 + scale) + shift)
        out = out.view(batch, height // p, width // p, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(batch, channels, height, width)


def tiny_mmdit(seed: int = 0, **kwargs: int) -> TinyMMDiT:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TinyMMDiT(**kwargs).eval()
    finally:
        torch.random.set_rng_state(state)
