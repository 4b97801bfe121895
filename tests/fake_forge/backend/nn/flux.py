"""A Flux-layout joint-attention DiT (double-stream and single-stream blocks).

Own re-implementation of the architecture in backend/nn/flux.py (Forge dfdcbab6), same module and
attribute names. As in Forge, every block calls the module-level ``attention(q, k, v, pe=...)``
through this module's globals at call time, so ``backend.nn.flux.attention = wrapper`` intercepts
every joint attention. q/k/v are ``[B, heads, L, D]`` with the text tokens first, then the image
tokens (row-major 2x2 patches); the result is ``[B, L, heads*D]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from backend.attention import attention_function
from torch import nn


# mirrors backend/nn/flux.py: attention (Forge dfdcbab6)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor | None = None) -> torch.Tensor:
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True)


# mirrors backend/nn/flux.py: rope (Forge dfdcbab6)
def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    """Rotation matrices [b, n, dim/2, 2, 2] for positions ``pos`` [b, n]."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    angles = pos.unsqueeze(-1).double() / (theta**exponents)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rows = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rows.view(*angles.shape, 2, 2).float()


# mirrors backend/nn/flux.py: apply_rope (Forge dfdcbab6)
def apply_rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    def rotate(x: torch.Tensor) -> torch.Tensor:
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        rotated = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
        return rotated.reshape(*x.shape).type_as(x)

    return rotate(xq), rotate(xk)


# mirrors backend/nn/flux.py: timestep_embedding (Forge dfdcbab6)
def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000, time_factor: float = 1000.0) -> torch.Tensor:
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding.to(t) if torch.is_floating_point(t) else embedding


# mirrors backend/nn/flux.py: EmbedND (Forge dfdcbab6)
class EmbedND(nn.Module):
    def __init__(self, dim: int, theta: int, axes_dim: list[int]) -> None:
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        parts = [rope(ids[..., axis], self.axes_dim[axis], self.theta) for axis in range(ids.shape[-1])]
        return torch.cat(parts, dim=-3).unsqueeze(1)


# mirrors backend/nn/flux.py: MLPEmbedder (Forge dfdcbab6)
class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


# mirrors backend/nn/flux.py: RMSNorm (Forge dfdcbab6)
class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.scale.to(x.dtype)


# mirrors backend/nn/flux.py: QKNorm (Forge dfdcbab6)
class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.query_norm(q), self.key_norm(k)
        return q.to(k), k.to(q)


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, 3*H*D] -> three [B, H, L, D]."""
    batch, length, width = qkv.shape
    q, k, v = qkv.view(batch, length, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    return q, k, v


# mirrors backend/nn/flux.py: SelfAttention (Forge dfdcbab6)
class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        q, k, v = _split_heads(self.qkv(x), self.num_heads)
        q, k = self.norm(q, k, v)
        return self.proj(attention(q, k, v, pe=pe))


# mirrors backend/nn/flux.py: Modulation (Forge dfdcbab6)
class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden_size: int, mlp_ratio: float) -> nn.Sequential:
    inner = int(hidden_size * mlp_ratio)
    return nn.Sequential(
        nn.Linear(hidden_size, inner, bias=True), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden_size, bias=True)
    )


# mirrors backend/nn/flux.py: DoubleStreamBlock (Forge dfdcbab6)
class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = _mlp(hidden_size, mlp_ratio)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = _mlp(hidden_size, mlp_ratio)

    def _stream_qkv(self, x: torch.Tensor, mod: tuple, norm: nn.Module, attn: SelfAttention) -> tuple:
        shift, scale = mod[0], mod[1]
        q, k, v = _split_heads(attn.qkv((1 + scale) * norm(x) + shift), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor) -> tuple:
        img_mod = self.img_mod(vec)
        txt_mod = self.txt_mod(vec)
        img_q, img_k, img_v = self._stream_qkv(img, img_mod, self.img_norm1, self.img_attn)
        txt_q, txt_k, txt_v = self._stream_qkv(txt, txt_mod, self.txt_norm1, self.txt_attn)

        # joint attention: text tokens first, then image tokens
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        attn = attention(q, k, v, pe=pe)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]

        img = img + img_mod[2] * self.img_attn.proj(img_attn)
        img = img + img_mod[5] * self.img_mlp((1 + img_mod[4]) * self.img_norm2(img) + img_mod[3])
        txt = txt + txt_mod[2] * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod[5] * self.txt_mlp((1 + txt_mod[4]) * self.txt_norm2(txt) + txt_mod[3])
        return img, txt


# mirrors backend/nn/flux.py: SingleStreamBlock (Forge dfdcbab6)
class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_scale: float | None = None) -> None:
        super().__init__()
        self.hidden_dim = hidden_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(
            self.linear1((1 + scale) * self.pre_norm(x) + shift), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1
        )
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe)
        return x + gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


# mirrors backend/nn/flux.py: LastLayer (Forge dfdcbab6)
class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


# mirrors backend/nn/flux.py: IntegratedFluxTransformer2DModel (Forge dfdcbab6)
class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(
        self,
        in_channels: int,
        vec_in_dim: int,
        context_in_dim: int,
        hidden_size: int,
        mlp_ratio: float,
        num_heads: int,
        depth: int,
        depth_single_blocks: int,
        axes_dim: list[int],
        theta: int,
        qkv_bias: bool,
        guidance_embed: bool,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"Hidden size {hidden_size} must be divisible by num_heads {num_heads}")
        if sum(axes_dim) != hidden_size // num_heads:
            raise ValueError(f"Got {axes_dim} but expected positional dim {hidden_size // num_heads}")
        self.guidance_embed = guidance_embed
        self.in_channels = in_channels * 4
        self.out_channels = self.in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=axes_dim)
        self.img_in = nn.Linear(self.in_channels, hidden_size, bias=True)
        self.time_in = MLPEmbedder(in_dim=256, hidden_dim=hidden_size)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = MLPEmbedder(in_dim=256, hidden_dim=hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(
            [DoubleStreamBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias) for _ in range(depth)]
        )
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth_single_blocks)]
        )
        self.final_layer = LastLayer(hidden_size, 1, self.out_channels)

    def inner_forward(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("Didn't get guidance strength for guidance distilled model.")
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        joint = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            joint = block(joint, vec=vec, pe=pe)
        return self.final_layer(joint[:, txt.shape[1] :, ...], vec)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        batch, channels, h, w = x.shape
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="circular")
        h_len, w_len = (h + 1) // 2, (w + 1) // 2
        # b c (h 2) (w 2) -> b (h w) (c 2 2)
        img = x.view(batch, channels, h_len, 2, w_len, 2).permute(0, 2, 4, 1, 3, 5).reshape(batch, h_len * w_len, -1)
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.arange(h_len, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.arange(w_len, device=x.device, dtype=x.dtype)[None, :]
        img_ids = img_ids.reshape(1, h_len * w_len, 3).repeat(batch, 1, 1)
        txt_ids = torch.zeros((batch, context.shape[1], 3), device=x.device, dtype=x.dtype)
        out = self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance)
        out = out.view(batch, h_len, w_len, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(batch, -1, h_len * 2, w_len * 2)
        return out[:, :, :h, :w]
