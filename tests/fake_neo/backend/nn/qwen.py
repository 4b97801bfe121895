"""Qwen-Image's MMDiT as in Forge Neo, tiny: text and image streams with their own projections, one
joint attention per block through the module-level ``attention_function``, text tokens first.

Own re-implementation; mirrors backend/nn/qwen.py (Forge Neo 2d0ed1fe) in what DeGu depends on:
``Attention`` (``to_q/k/v`` for the image, ``add_q/k/v_proj`` for the text, per-head RMS norms, the rope
applied to the joint q/k *before* the kernel, q/k/v flattened to (B, L, heads*D),
``attention_function(q, k, v, heads, attention_mask)``), ``QwenImageTransformerBlock`` (6-way
modulation of both streams), ``transformer_blocks``, ``process_img`` (2x2 patches of a (B, C, T, H, W)
latent, ids centred on the image), text ids from ``txt_start``, and ``forward(x, timesteps, context,
attention_mask=None, guidance=None, ref_latents=None, transformer_options={}, control=None, **kwargs)``.
The simulated host's Qwen-Image latents are 4-D (how Neo adds the frame axis was not read): a 4-D
input gets T = 1 here and loses it on the way out. Not simulated: reference latents (-Edit), ControlNet,
block-replace patches, the timestep projection's exact form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from backend.attention import attention_pytorch as attention_function
from backend.nn.flux import EmbedND
from torch import nn


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 0:
        return x
    t_ = x.reshape(*x.shape[:-1], -1, 1, 2)
    t_out = freqs_cis[..., 0] * t_[..., 0] + freqs_cis[..., 1] * t_[..., 1]
    return t_out.reshape(*x.shape)


# mirrors backend/nn/qwen.py: Attention (Forge Neo 2d0ed1fe)
class Attention(nn.Module):
    def __init__(self, query_dim: int, dim_head: int, heads: int, eps: float = 1e-5) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_k = nn.RMSNorm(dim_head, eps=eps)
        self.norm_added_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_added_k = nn.RMSNorm(dim_head, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(query_dim, inner) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(query_dim, inner) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(inner, query_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: Any = None,
        attention_mask: Any = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq_txt = encoder_hidden_states.shape[1]
        split = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        img_q, img_k, img_v = (
            split(self.to_q(hidden_states)),
            split(self.to_k(hidden_states)),
            split(self.to_v(hidden_states)),
        )
        txt_q = split(self.add_q_proj(encoder_hidden_states))
        txt_k = split(self.add_k_proj(encoder_hidden_states))
        txt_v = split(self.add_v_proj(encoder_hidden_states))
        img_q, img_k = self.norm_q(img_q), self.norm_k(img_k)
        txt_q, txt_k = self.norm_added_q(txt_q), self.norm_added_k(txt_k)
        joint_q = apply_rotary_emb(torch.cat([txt_q, img_q], dim=1), image_rotary_emb)
        joint_k = apply_rotary_emb(torch.cat([txt_k, img_k], dim=1), image_rotary_emb)
        joint_v = torch.cat([txt_v, img_v], dim=1)
        joint = attention_function(
            joint_q.flatten(start_dim=2),
            joint_k.flatten(start_dim=2),
            joint_v.flatten(start_dim=2),
            self.heads,
            attention_mask,
        )
        img = self.to_out[1](self.to_out[0](joint[:, seq_txt:]))
        return img, self.to_add_out(joint[:, :seq_txt])


# mirrors backend/nn/qwen.py: QwenImageTransformerBlock (Forge Neo 2d0ed1fe)
class QwenImageTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.img_norm1, self.img_norm2, self.txt_norm1, self.txt_norm2 = (
            nn.LayerNorm(dim, elementwise_affine=False, eps=eps) for _ in range(4)
        )
        self.img_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.txt_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.attn = Attention(dim, attention_head_dim, num_attention_heads)

    @staticmethod
    def _modulate(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = torch.chunk(params, 3, dim=-1)
        return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: Any,
        temb: torch.Tensor,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_in, img_gate1 = self._modulate(self.img_norm1(hidden_states), img_mod1)
        txt_in, txt_gate1 = self._modulate(self.txt_norm1(encoder_hidden_states), txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in, encoder_hidden_states_mask, image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states + img_gate1 * img_attn
        encoder_hidden_states = encoder_hidden_states + txt_gate1 * txt_attn
        img_in, img_gate2 = self._modulate(self.img_norm2(hidden_states), img_mod2)
        hidden_states = torch.addcmul(hidden_states, img_gate2, self.img_mlp(img_in))
        txt_in, txt_gate2 = self._modulate(self.txt_norm2(encoder_hidden_states), txt_mod2)
        encoder_hidden_states = torch.addcmul(encoder_hidden_states, txt_gate2, self.txt_mlp(txt_in))
        return encoder_hidden_states, hidden_states


# mirrors backend/nn/qwen.py: QwenImageTransformer2DModel (Forge Neo 2d0ed1fe)
class QwenImageTransformer2DModel(nn.Module):
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 64,
        out_channels: int = 16,
        num_layers: int = 4,
        attention_head_dim: int = 8,
        num_attention_heads: int = 2,
        joint_attention_dim: int = 32,
        axes_dims_rope: tuple[int, int, int] = (2, 2, 4),
    ) -> None:
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        inner = num_attention_heads * attention_head_dim
        self.pe_embedder = EmbedND(dim=attention_head_dim, theta=10000, axes_dim=list(axes_dims_rope))
        self.time_in = nn.Sequential(nn.Linear(32, inner), nn.SiLU(), nn.Linear(inner, inner))
        self.txt_norm = nn.RMSNorm(joint_attention_dim, eps=1e-6)
        self.img_in = nn.Linear(in_channels, inner)
        self.txt_in = nn.Linear(joint_attention_dim, inner)
        self.transformer_blocks = nn.ModuleList(
            [QwenImageTransformerBlock(inner, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.norm_out = nn.LayerNorm(inner, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(inner, patch_size * patch_size * out_channels)

    def process_img(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        bs, c, t, h, w = x.shape
        p = self.patch_size
        padded = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        shape = padded.shape
        hidden = padded.view(shape[0], shape[1], shape[-2] // 2, 2, shape[-1] // 2, 2).permute(0, 2, 4, 1, 3, 5)
        hidden = hidden.reshape(shape[0], (shape[-2] // 2) * (shape[-1] // 2), shape[1] * 4)
        h_len, w_len = (h + p // 2) // p, (w + p // 2) // p
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device)
        img_ids[:, :, 1] += torch.linspace(0, h_len - 1, steps=h_len, device=x.device).unsqueeze(1) - (h_len // 2)
        img_ids[:, :, 2] += torch.linspace(0, w_len - 1, steps=w_len, device=x.device).unsqueeze(0) - (w_len // 2)
        return hidden, img_ids.reshape(1, h_len * w_len, 3).repeat(bs, 1, 1), shape

    def _time(self, timesteps: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(16, device=timesteps.device) / 16)
        args = timesteps.float()[:, None] * 1000.0 * freqs[None]
        return self.time_in(torch.cat([args.cos(), args.sin()], dim=-1))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        attention_mask: Any = None,
        guidance: Any = None,
        ref_latents: Any = None,
        transformer_options: Any = None,
        control: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        four_d = x.dim() == 4
        if four_d:
            x = x.unsqueeze(2)
        hidden_states, img_ids, orig_shape = self.process_img(x)
        num_embeds = hidden_states.shape[1]
        txt_start = round(max(((x.shape[-1] + 1) // 2) // 2, ((x.shape[-2] + 1) // 2) // 2))
        txt_ids = torch.arange(txt_start, txt_start + context.shape[1], device=x.device)
        txt_ids = txt_ids.reshape(1, -1, 1).repeat(x.shape[0], 1, 3)
        rotary = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)).squeeze(1).unsqueeze(2).to(x.dtype)
        hidden_states = self.img_in(hidden_states)
        encoder_hidden_states = self.txt_in(self.txt_norm(context.to(hidden_states.dtype)))
        temb = self._time(timesteps).to(hidden_states.dtype)
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                encoder_hidden_states_mask=attention_mask,
                temb=temb,
                image_rotary_emb=rotary,
            )
        hidden_states = self.proj_out(self.norm_out(hidden_states))
        out = hidden_states[:, :num_embeds].view(
            orig_shape[0], orig_shape[-2] // 2, orig_shape[-1] // 2, self.out_channels, 2, 2
        )
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(orig_shape[0], self.out_channels, 1, orig_shape[-2], orig_shape[-1])
        out = out[:, :, :, : x.shape[-2], : x.shape[-1]]
        return out[:, :, 0] if four_d else out


def tiny_qwen_image(seed: int = 0) -> QwenImageTransformer2DModel:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = QwenImageTransformer2DModel()
    finally:
        torch.random.set_rng_state(state)
    return model.eval()
