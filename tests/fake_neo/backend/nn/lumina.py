"""NextDiT (Lumina 2, Z-Image) as in Forge Neo, tiny: caption and image tokens refined on their own,
then joined (text first) in ``layers``; every attention goes through the module-level
``attention_function`` with q/k/v (B, heads, L, D).

Own re-implementation; mirrors backend/nn/lumina.py (Forge Neo e75b2422, ComfyUI's NextDiT) in what
DeGu depends on: ``JointAttention`` (fused ``qkv``, grouped kv heads repeated, q/k RMS norms, the rope
applied *before* ``attention_function(q, k, v, heads, mask, skip_reshape=True,
transformer_options=...)``), ``JointTransformerBlock`` (tanh-gated adaLN modulation), the
``context_refiner`` (text tokens only), the ``noise_refiner`` (image tokens only), ``pad_tokens_multiple``
(caption and image tokens each padded with a learned token; Z-Image), ``patchify_and_embed``,
``unpatchify``, ``forward(x, timesteps, context, num_tokens=None, attention_mask=None, **kwargs)``
returning ``-x`` at ``t = 1 - timesteps``. Not simulated: Z-Image's 256-wide modulation input
(``z_image_modulation``), ``num_tokens`` from ``dynamic_args``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from backend.attention import attention_pytorch as attention_function
from backend.nn.flux import EmbedND
from torch import nn


def modulate(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1))


# mirrors backend/nn/lumina.py: JointAttention (Forge Neo e75b2422)
class JointAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None) -> None:
        super().__init__()
        self.n_local_heads = n_heads
        self.n_local_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, (n_heads + 2 * self.n_local_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    @staticmethod
    def apply_rotary_emb(x_in: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        t_ = x_in.reshape(*x_in.shape[:-1], -1, 1, 2)
        t_out = freqs_cis[..., 0] * t_[..., 0] + freqs_cis[..., 1] * t_[..., 1]
        return t_out.reshape(*x_in.shape)

    def forward(
        self, x: torch.Tensor, x_mask: Any, freqs_cis: torch.Tensor, transformer_options: Any = None
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        kv = self.n_local_kv_heads * self.head_dim
        xq, xk, xv = torch.split(self.qkv(x), [self.n_local_heads * self.head_dim, kv, kv], dim=-1)
        xq = self.q_norm(xq.view(bsz, seqlen, self.n_local_heads, self.head_dim))
        xk = self.k_norm(xk.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim))
        xv = xv.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xq = JointAttention.apply_rotary_emb(xq, freqs_cis=freqs_cis)
        xk = JointAttention.apply_rotary_emb(xk, freqs_cis=freqs_cis)
        n_rep = self.n_local_heads // self.n_local_kv_heads
        if n_rep >= 1:
            xk = xk.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
            xv = xv.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        output = attention_function(
            xq.movedim(1, 2),
            xk.movedim(1, 2),
            xv.movedim(1, 2),
            self.n_local_heads,
            x_mask,
            skip_reshape=True,
            transformer_options=transformer_options,
        )
        return self.out(output)


# mirrors backend/nn/lumina.py: JointTransformerBlock (Forge Neo e75b2422)
class JointTransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None, modulation: bool = True) -> None:
        super().__init__()
        self.attention = JointAttention(dim, n_heads, n_kv_heads)
        self.feed_forward = nn.ModuleDict(
            {
                "w1": nn.Linear(dim, 2 * dim, bias=False),
                "w2": nn.Linear(2 * dim, dim, bias=False),
                "w3": nn.Linear(dim, 2 * dim, bias=False),
            }
        )
        self.attention_norm1, self.ffn_norm1, self.attention_norm2, self.ffn_norm2 = (nn.RMSNorm(dim) for _ in range(4))
        self.modulation = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, 1024), 4 * dim))

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feed_forward
        return f["w2"](F.silu(f["w1"](x)) * f["w3"](x))

    def forward(
        self,
        x: torch.Tensor,
        x_mask: Any,
        freqs_cis: torch.Tensor,
        adaln_input: Any = None,
        transformer_options: Any = None,
    ) -> torch.Tensor:
        if self.modulation:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input).chunk(4, dim=1)
            attended = self.attention(
                modulate(self.attention_norm1(x), scale_msa), x_mask, freqs_cis, transformer_options
            )
            x = x + gate_msa.unsqueeze(1).tanh() * self.attention_norm2(attended)
            return x + gate_mlp.unsqueeze(1).tanh() * self.ffn_norm2(self._ffn(modulate(self.ffn_norm1(x), scale_mlp)))
        x = x + self.attention_norm2(self.attention(self.attention_norm1(x), x_mask, freqs_cis, transformer_options))
        return x + self.ffn_norm2(self._ffn(self.ffn_norm1(x)))


# mirrors backend/nn/lumina.py: NextDiT (Forge Neo e75b2422)
class NextDiT(nn.Module):
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 16,
        dim: int = 32,
        n_layers: int = 4,
        n_refiner_layers: int = 1,
        n_heads: int = 2,
        n_kv_heads: int | None = 1,
        cap_feat_dim: int = 32,
        axes_dims: tuple[int, int, int] = (4, 6, 6),
        pad_tokens_multiple: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.patch_size = patch_size
        self.pad_tokens_multiple = pad_tokens_multiple
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.noise_refiner = nn.ModuleList(
            [JointTransformerBlock(dim, n_heads, n_kv_heads) for _ in range(n_refiner_layers)]
        )
        self.context_refiner = nn.ModuleList(
            [JointTransformerBlock(dim, n_heads, n_kv_heads, modulation=False) for _ in range(n_refiner_layers)]
        )
        self.t_embedder = nn.Sequential(nn.Linear(32, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.cap_embedder = nn.Sequential(nn.RMSNorm(cap_feat_dim), nn.Linear(cap_feat_dim, dim))
        self.layers = nn.ModuleList([JointTransformerBlock(dim, n_heads, n_kv_heads) for _ in range(n_layers)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(dim, patch_size * patch_size * self.out_channels)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))
        if pad_tokens_multiple is not None:
            self.x_pad_token = nn.Parameter(torch.randn((1, dim)))
            self.cap_pad_token = nn.Parameter(torch.randn((1, dim)))
        assert dim // n_heads == sum(axes_dims)
        self.rope_embedder = EmbedND(dim=dim // n_heads, theta=10000, axes_dim=list(axes_dims))

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(16, device=t.device) / 16)
        args = t.float()[:, None] * 1000.0 * freqs[None]
        return self.t_embedder(torch.cat([args.cos(), args.sin()], dim=-1))

    def patchify_and_embed(
        self, x: torch.Tensor, cap_feats: torch.Tensor, cap_mask: Any, t: torch.Tensor, transformer_options: Any
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        bsz, pH, device = len(x), self.patch_size, x.device
        if self.pad_tokens_multiple is not None:
            pad_extra = (-cap_feats.shape[1]) % self.pad_tokens_multiple
            pad = self.cap_pad_token.to(cap_feats).unsqueeze(0).repeat(cap_feats.shape[0], pad_extra, 1)
            cap_feats = torch.cat((cap_feats, pad), dim=1)
        cap_pos_ids = torch.zeros(bsz, cap_feats.shape[1], 3, dtype=torch.float32, device=device)
        cap_pos_ids[:, :, 0] = torch.arange(cap_feats.shape[1], dtype=torch.float32, device=device) + 1.0
        B, C, H, W = x.shape
        x = self.x_embedder(x.view(B, C, H // pH, pH, W // pH, pH).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2))
        h_tokens, w_tokens = H // pH, W // pH
        x_pos_ids = torch.zeros((bsz, x.shape[1], 3), dtype=torch.float32, device=device)
        x_pos_ids[:, :, 0] = cap_feats.shape[1] + 1
        x_pos_ids[:, :, 1] = (
            torch.arange(h_tokens, dtype=torch.float32, device=device).view(-1, 1).repeat(1, w_tokens).flatten()
        )
        x_pos_ids[:, :, 2] = (
            torch.arange(w_tokens, dtype=torch.float32, device=device).view(1, -1).repeat(h_tokens, 1).flatten()
        )
        if self.pad_tokens_multiple is not None:
            pad_extra = (-x.shape[1]) % self.pad_tokens_multiple
            x = torch.cat((x, self.x_pad_token.to(x).unsqueeze(0).repeat(x.shape[0], pad_extra, 1)), dim=1)
            x_pos_ids = F.pad(x_pos_ids, (0, 0, 0, pad_extra))
        freqs_cis = self.rope_embedder(torch.cat((cap_pos_ids, x_pos_ids), dim=1)).movedim(1, 2).to(x.dtype)
        text = cap_pos_ids.shape[1]
        for layer in self.context_refiner:
            cap_feats = layer(cap_feats, cap_mask, freqs_cis[:, :text], transformer_options=transformer_options)
        for layer in self.noise_refiner:
            x = layer(x, None, freqs_cis[:, text:], t, transformer_options=transformer_options)
        return torch.cat((cap_feats, x), dim=1), text, freqs_cis

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        num_tokens: Any = None,
        attention_mask: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        t = self._time(1.0 - timesteps)
        bs, c, h, w = x.shape
        x = F.pad(x, (0, (-w) % self.patch_size, 0, (-h) % self.patch_size))
        transformer_options = kwargs.get("transformer_options", {})
        cap_feats = self.cap_embedder(context.to(x.dtype))
        tokens, text, freqs_cis = self.patchify_and_embed(x, cap_feats, attention_mask, t, transformer_options)
        for layer in self.layers:
            tokens = layer(tokens, None, freqs_cis, t, transformer_options=transformer_options)
        tokens = self.final_linear(modulate(self.final_norm(tokens), self.final_modulation(t)))
        H, W, p = x.shape[-2], x.shape[-1], self.patch_size
        img = tokens[:, text : text + (H // p) * (W // p)]
        img = (
            img.view(bs, H // p, W // p, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)
        )
        return -img[:, :, :h, :w]


def tiny_next_dit(seed: int = 0, pad_tokens_multiple: int | None = None) -> NextDiT:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = NextDiT(pad_tokens_multiple=pad_tokens_multiple)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()
