"""SD3.5's MM-DiT (MMDiT-X) in Forge's layout, small.

Own re-implementation of backend/nn/mmditx.py (Forge dfdcbab6), same class, function and attribute
names. What an extension sees is kept: every joint block calls ``block_mixing``, which calls this
module's global ``attention(q, k, v, heads)`` (q/k ``[B, L, heads*dim_head]``, v ``[B, L, heads,
dim_head]``; the context tokens first, then the image's 2x2 patches row-major) once for the joint
attention and, in MMDiT-X blocks (``x_block_self_attn``: SD3.5 medium's first 13 blocks), once more
for ``x_block.attn2``, a self-attention over the image tokens only; q/k pass through ``ln_q``/``ln_k``
(RMSNorm for SD3.5); ``transformer_options["skip_layers"]`` skips blocks; the last block's context
stream is ``pre_only``.

The departures: the real width is ``64 * depth`` (head dim 64, ``depth`` heads); ``head_dim``
shrinks it for tests, ``width_depth`` keeps a full model's width at fewer blocks (lab/step_cost.py).
``pos_embed`` is filled with the 2-D sin-cos table (the real one is loaded from the checkpoint) and
RMSNorm weights start at 1 (the real ones are ``torch.empty`` until loaded).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


# mirrors backend/nn/mmditx.py: attention (Forge dfdcbab6)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Any = None) -> torch.Tensor:
    b, _, dim_head = q.shape
    dim_head //= heads
    q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(x)


def split_qkv(qkv: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1, head_dim).movedim(2, 0)
    return qkv[0], qkv[1], qkv[2]


# mirrors backend/nn/mmditx.py: SelfAttention (Forge dfdcbab6)
class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, pre_only: bool = False,
                 qk_norm: str | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        self.pre_only = pre_only
        if qk_norm == "rms":
            self.ln_q, self.ln_k = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        elif qk_norm is None:
            self.ln_q, self.ln_k = nn.Identity(), nn.Identity()
        else:
            raise ValueError(qk_norm)

    def pre_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = split_qkv(self.qkv(x), self.head_dim)
        q = self.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
        k = self.ln_k(k).reshape(q.shape[0], q.shape[1], -1)
        return q, k, v  # v stays [B, L, heads, dim_head], as in the real code

    def post_attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# mirrors backend/nn/mmditx.py: DismantledBlock (Forge dfdcbab6), without scale_mod_only/swiglu/rmsnorm
class DismantledBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 pre_only: bool = False, qk_norm: str | None = None, x_block_self_attn: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias, pre_only, qk_norm)
        self.x_block_self_attn = x_block_self_attn
        if x_block_self_attn:
            self.attn2 = SelfAttention(hidden_size, num_heads, qkv_bias, False, qk_norm)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        n_mods = 9 if x_block_self_attn else (6 if not pre_only else 2)
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

    def pre_attention_x(self, x: torch.Tensor, c: torch.Tensor) -> tuple[Any, Any, Any]:
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_msa2, scale_msa2, gate_msa2) = self.adaLN_modulation(c).chunk(9, dim=1)
        x_norm = self.norm1(x)
        qkv = self.attn.pre_attention(modulate(x_norm, shift_msa, scale_msa))
        qkv2 = self.attn2.pre_attention(modulate(x_norm, shift_msa2, scale_msa2))
        return qkv, qkv2, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp, gate_msa2)

    def post_attention_x(self, attn: torch.Tensor, attn2: torch.Tensor, x: torch.Tensor, gate_msa: torch.Tensor,
                         shift_mlp: torch.Tensor, scale_mlp: torch.Tensor, gate_mlp: torch.Tensor,
                         gate_msa2: torch.Tensor) -> torch.Tensor:
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        x = x + gate_msa2.unsqueeze(1) * self.attn2.post_attention(attn2)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


# mirrors backend/nn/mmditx.py: block_mixing (Forge dfdcbab6)
def block_mixing(context: torch.Tensor, x: torch.Tensor, context_block: DismantledBlock,
                 x_block: DismantledBlock, c: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    if x_block.x_block_self_attn:
        x_qkv, x_qkv2, x_intermediates = x_block.pre_attention_x(x, c)
    else:
        x_qkv, x_intermediates = x_block.pre_attention(x, c)
    q, k, v = (torch.cat((context_qkv[i], x_qkv[i]), dim=1) for i in range(3))
    attn = attention(q, k, v, x_block.attn.num_heads)
    context_attn, x_attn = attn[:, : context_qkv[0].shape[1]], attn[:, context_qkv[0].shape[1] :]
    context = None if context_block.pre_only else context_block.post_attention(context_attn, *context_intermediates)
    if x_block.x_block_self_attn:
        x_q2, x_k2, x_v2 = x_qkv2
        attn2 = attention(x_q2, x_k2, x_v2, x_block.attn2.num_heads)
        x = x_block.post_attention_x(x_attn, attn2, *x_intermediates)
    else:
        x = x_block.post_attention(x_attn, *x_intermediates)
    return context, x


class JointBlock(nn.Module):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        pre_only = kwargs.pop("pre_only")
        qk_norm = kwargs.pop("qk_norm", None)
        x_block_self_attn = kwargs.pop("x_block_self_attn", False)
        self.context_block = DismantledBlock(*args, pre_only=pre_only, qk_norm=qk_norm, **kwargs)
        self.x_block = DismantledBlock(*args, pre_only=False, qk_norm=qk_norm, x_block_self_attn=x_block_self_attn,
                                       **kwargs)

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


# mirrors backend/nn/mmditx.py: MMDiTX (Forge dfdcbab6)
class MMDiTX(nn.Module):
    def __init__(self, patch_size: int = 2, in_channels: int = 16, depth: int = 24, mlp_ratio: float = 4.0,
                 adm_in_channels: int = 2048, context_embedder_config: dict | None = None, register_length: int = 0,
                 pos_embed_max_size: int = 192, qk_norm: str | None = None,
                 x_block_self_attn_layers: list[int] | None = None, qkv_bias: bool = True,
                 head_dim: int = 64, width_depth: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = 16
        self.patch_size = patch_size
        self.pos_embed_max_size = pos_embed_max_size
        self.x_block_self_attn_layers = (
            list(range(13)) if pos_embed_max_size == 384 else list(x_block_self_attn_layers or [])
        )
        hidden_size = head_dim * (width_depth or depth)
        num_heads = width_depth or depth
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
            JointBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pre_only=i == depth - 1,
                       qk_norm=qk_norm, x_block_self_attn=i in self.x_block_self_attn_layers)
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

    def forward_core_with_concat(self, x: torch.Tensor, c_mod: torch.Tensor, context: torch.Tensor,
                                 skip_layers: list[int], controlnet_hidden_states: Any = None) -> torch.Tensor:
        if self.register_length > 0:
            context = torch.cat((self.register.expand(x.shape[0], -1, -1), context), 1)
        for i, block in enumerate(self.joint_blocks):
            if i in skip_layers:
                continue
            context, x = block(context, x, c=c_mod)
            if controlnet_hidden_states is not None:
                interval = len(self.joint_blocks) // len(controlnet_hidden_states)
                x = x + controlnet_hidden_states[i // interval]
        return self.final_layer(x, c_mod)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, control: Any = None,
                transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        skip_layers = (transformer_options or {}).get("skip_layers", [])
        hw = (x.shape[-2], x.shape[-1])
        x = self.x_embedder(x) + self.cropped_pos_embed(hw).to(x.device, x.dtype)
        c = self.t_embedder(t, dtype=x.dtype)
        if y is not None:
            c = c + self.y_embedder(y)
        context = self.context_embedder(context)
        x = self.forward_core_with_concat(x, c, context, skip_layers, control)
        return self.unpatchify(x, hw=hw)
