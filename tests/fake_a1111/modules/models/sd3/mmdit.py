"""SD3's MM-DiT in AUTOMATIC1111's layout, small.

Own re-implementation of modules/models/sd3/mmdit.py (A1111 1.10.1, 82a973c0), same class, function
and attribute names. What an extension sees is kept: ``JointBlock.forward`` calls ``block_mixing``,
which calls this module's global ``attention`` (imported from ``other_impls``, as in the real file)
once per block on q/k ``[B, L, heads*dim_head]`` and v ``[B, L, heads, dim_head]``: the context tokens
(CLIP-L/G chunks, then as many T5 tokens) first, then the image's 2x2 patches row-major. No q/k norm,
no MMDiT-X ``attn2`` (SD3 medium); the last block's context stream is ``pre_only``; ``forward(x, t,
y=None, context=None)``.

The one departure: the real width is ``64 * depth`` (head dim 64, ``depth`` heads); ``head_dim``
shrinks it for tests. ``pos_embed`` is filled with the 2-D sin-cos table (the real one is loaded
from the checkpoint).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from modules.models.sd3.other_impls import Mlp, attention
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    if shift is None:
        shift = torch.zeros_like(scale)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size**2, embed_dim): get_2d_sincos_pos_embed's table (w first, then h)."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_h, grid_w = torch.meshgrid(coords, coords, indexing="ij")

    def one_d(dim: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_d(embed_dim // 2, grid_w), one_d(embed_dim // 2, grid_h)], dim=1).float()


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor, dtype: torch.dtype, **kwargs: Any) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype))


class VectorEmbedder(nn.Module):
    def __init__(self, input_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class QkvLinear(torch.nn.Linear):
    pass


def split_qkv(qkv: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1, head_dim).movedim(2, 0)
    return qkv[0], qkv[1], qkv[2]


# mirrors modules/models/sd3/mmdit.py: SelfAttention (A1111 1.10.1), qk_norm None
class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, pre_only: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = QkvLinear(dim, dim * 3, bias=qkv_bias)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        self.pre_only = pre_only
        self.ln_q, self.ln_k = nn.Identity(), nn.Identity()

    def pre_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = split_qkv(self.qkv(x), self.head_dim)
        q = self.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
        k = self.ln_k(k).reshape(q.shape[0], q.shape[1], -1)
        return q, k, v

    def post_attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


# mirrors modules/models/sd3/mmdit.py: DismantledBlock (A1111 1.10.1), without rmsnorm/swiglu/scale_mod_only
class DismantledBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 pre_only: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias, pre_only)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), nn.GELU(approximate="tanh"))
        n_mods = 6 if not pre_only else 2
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_mods * hidden_size))
        self.pre_only = pre_only

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor) -> tuple[Any, Any]:
        if not self.pre_only:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa))
            return qkv, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        shift_msa, scale_msa = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa)), None

    def post_attention(self, attn: torch.Tensor, x: torch.Tensor, gate_msa: torch.Tensor, shift_mlp: torch.Tensor,
                       scale_mlp: torch.Tensor, gate_mlp: torch.Tensor) -> torch.Tensor:
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        (q, k, v), intermediates = self.pre_attention(x, c)
        return self.post_attention(attention(q, k, v, self.attn.num_heads), *intermediates)


# mirrors modules/models/sd3/mmdit.py: block_mixing (A1111 1.10.1)
def block_mixing(context: torch.Tensor, x: torch.Tensor, context_block: DismantledBlock,
                 x_block: DismantledBlock, c: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    x_qkv, x_intermediates = x_block.pre_attention(x, c)
    q, k, v = (torch.cat((context_qkv[t], x_qkv[t]), dim=1) for t in range(3))
    attn = attention(q, k, v, x_block.attn.num_heads)
    context_attn, x_attn = attn[:, : context_qkv[0].shape[1]], attn[:, context_qkv[0].shape[1] :]
    context = None if context_block.pre_only else context_block.post_attention(context_attn, *context_intermediates)
    return context, x_block.post_attention(x_attn, *x_intermediates)


class JointBlock(nn.Module):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        pre_only = kwargs.pop("pre_only")
        self.context_block = DismantledBlock(*args, pre_only=pre_only, **kwargs)
        self.x_block = DismantledBlock(*args, pre_only=False, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# mirrors modules/models/sd3/mmdit.py: MMDiT (A1111 1.10.1), as sd3_impls.py BaseModel builds it
class MMDiT(nn.Module):
    def __init__(self, patch_size: int = 2, in_channels: int = 16, depth: int = 24, mlp_ratio: float = 4.0,
                 adm_in_channels: int = 2048, context_embedder_config: dict | None = None, register_length: int = 0,
                 pos_embed_max_size: int = 192, qkv_bias: bool = True, head_dim: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.patch_size = patch_size
        self.pos_embed_max_size = pos_embed_max_size
        hidden_size = head_dim * depth
        num_heads = depth
        self.num_heads = num_heads
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = VectorEmbedder(adm_in_channels, hidden_size)
        self.context_embedder: nn.Module = nn.Identity()
        if context_embedder_config is not None and context_embedder_config["target"] == "torch.nn.Linear":
            self.context_embedder = nn.Linear(**context_embedder_config["params"])
        self.register_length = register_length
        if register_length > 0:
            self.register = nn.Parameter(torch.randn(1, register_length, hidden_size))
        self.register_buffer("pos_embed", sincos_2d(hidden_size, pos_embed_max_size)[None])
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pre_only=i == depth - 1)
            for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def cropped_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        p = self.x_embedder.patch_size[0]
        h, w = hw[0] // p, hw[1] // p
        top, left = (self.pos_embed_max_size - h) // 2, (self.pos_embed_max_size - w) // 2
        grid = self.pos_embed.view(1, self.pos_embed_max_size, self.pos_embed_max_size, -1)
        return grid[:, top : top + h, left : left + w, :].reshape(1, h * w, -1)

    def unpatchify(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        c, p = self.out_channels, self.x_embedder.patch_size[0]
        h, w = hw[0] // p, hw[1] // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward_core_with_concat(self, x: torch.Tensor, c_mod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.register_length > 0:
            context = torch.cat((self.register.expand(x.shape[0], -1, -1), context), 1)
        for block in self.joint_blocks:
            context, x = block(context, x, c=c_mod)
        return self.final_layer(x, c_mod)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        hw = (x.shape[-2], x.shape[-1])
        x = self.x_embedder(x) + self.cropped_pos_embed(hw)
        c = self.t_embedder(t, dtype=x.dtype)
        if y is not None:
            c = c + self.y_embedder(y)
        context = self.context_embedder(context)
        x = self.forward_core_with_concat(x, c, context)
        return self.unpatchify(x, hw=hw)
