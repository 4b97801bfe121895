"""The miniature text-to-image model: a word-level tokenizer, a small causal text encoder (CLIP's
shape: BOS, words, EOS padding, a causal mask) and diffusers' ``UNet2DConditionModel`` on a tiny
latent space.

The latent is the 32x32 image folded 2x2 into channels (``pixel_unshuffle``: 12 x 16 x 16), a fixed,
lossless stand-in for SD's VAE that costs nothing to train. The UNet has SD's layout in miniature:
a plain 16x16 level, cross-attention at 8x8 and 4x4 (latent downsample factors 2 and 4, the levels
DeGu's attention capture reads by default) and in the mid block. Its modules are named
``attn2.to_q`` / ``attn2.to_k`` like the LDM UNet, so ``lib_degu.attention.AttentionCapture`` runs
on it unchanged. (A 32x32 pixel-space UNet of the same width trained 3-4x slower per sample here.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from lab import scenes

CONTEXT_LENGTH = 20
WIDTH = 64
# Rare tokens: in the vocabulary, never in a training caption (like "sks" in CLIP's vocabulary).
RARE_TOKENS = ("sks", "ohwx", "zkw", "qtv")
WORDS = (
    ("<bos>", "<eos>", "a", "and", "on", "background", "striped")
    + scenes.SHAPES + tuple(scenes.OBJECT_COLOURS) + tuple(scenes.BACKGROUND_COLOURS) + scenes.TEXTURES
    + RARE_TOKENS
)
MODELS_DIR = Path(__file__).resolve().parent / "models"


class Tokenizer:
    """Word-level; pads with EOS like CLIP. Extra words (Textual Inversion) extend the vocabulary."""

    def __init__(self, extra_words: Sequence[str] = ()) -> None:
        self.words = list(WORDS) + [w for w in extra_words if w not in WORDS]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = [self.index["<bos>"]] + [self.index[w] for w in prompt.split()] + [self.index["<eos>"]]
            if len(ids) > CONTEXT_LENGTH:
                raise ValueError(f"prompt longer than {CONTEXT_LENGTH - 2} words: {prompt!r}")
            rows.append(ids + [self.index["<eos>"]] * (CONTEXT_LENGTH - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def positions(self, prompt: str, subject: str) -> list[int]:
        """Token positions of ``subject`` (one or more words) in ``prompt`` (BOS is position 0)."""
        words, target = prompt.split(), subject.split()
        found = []
        for start in range(len(words) - len(target) + 1):
            if words[start:start + len(target)] == target:
                found.extend(range(start + 1, start + 1 + len(target)))
        return found


class TextEncoder(nn.Module):
    """Token embedding + positions + two causal transformer layers + final norm (CLIP in miniature)."""

    def __init__(self, vocab: int = len(WORDS), width: int = WIDTH, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Parameter(torch.zeros(CONTEXT_LENGTH, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        causal = torch.triu(torch.full((CONTEXT_LENGTH, CONTEXT_LENGTH), float("-inf")), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, ids: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids) if embeddings is None else embeddings
        x = x + self.position_embedding
        return self.final_norm(self.layers(x, mask=self.causal, is_causal=True))


LATENT_FOLD = 2
LATENT_CHANNELS = 3 * LATENT_FOLD**2
LATENT_SIZE = scenes.SIZE // LATENT_FOLD
LEVEL_CHANNELS = (32, 64, 64)


def to_latent(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) images in [-1, 1] -> (B, 12, 16, 16) latents."""
    return F.pixel_unshuffle(images, LATENT_FOLD)


def to_image(latents: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(latents, LATENT_FOLD)


def build_unet(seed: int = 0, attention_from_level: int = 1) -> UNet2DConditionModel:
    """The UNet; cross-attention on the levels from ``attention_from_level`` down (0: 16x16, 1: 8x8,
    2: 4x4). The committed models use 1; 0 adds cross-attention at the latent's own size, the finer map
    the mask could read (README, "What limits this lab")."""
    torch.manual_seed(seed)
    levels = range(len(LEVEL_CHANNELS))
    down = tuple("CrossAttnDownBlock2D" if i >= attention_from_level else "DownBlock2D" for i in levels)
    up = tuple("CrossAttnUpBlock2D" if i >= attention_from_level else "UpBlock2D" for i in reversed(levels))
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=LEVEL_CHANNELS,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
    )


@dataclass
class Schedule:
    """DDPM's linear beta schedule (SD's eps prediction), 1000 steps."""

    steps: int = 1000

    def __post_init__(self) -> None:
        betas = torch.linspace(1e-4, 0.02, self.steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


@dataclass
class Miniature:
    """The text encoder, the UNet and the tokenizer, as one text-to-image model."""

    text_encoder: TextEncoder
    unet: UNet2DConditionModel
    tokenizer: Tokenizer

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder(self.tokenizer(prompts))

    def eval(self) -> Miniature:
        self.text_encoder.eval()
        self.unet.eval()
        return self


def save(model: Miniature, path: Path) -> None:
    tensors = {f"text.{k}": v for k, v in model.text_encoder.state_dict().items()}
    tensors |= {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
    save_file({k: v.detach().half().contiguous() for k, v in tensors.items()}, str(path))


def load(path: Path = MODELS_DIR / "base.safetensors") -> Miniature:
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    text = TextEncoder()
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
    # A model trained with cross-attention at the 16x16 level carries its weights under down_blocks.0.
    finest = any(k.startswith("unet.down_blocks.0.attentions.") for k in tensors)
    unet = build_unet(attention_from_level=0 if finest else 1)
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    return Miniature(text, unet, Tokenizer()).eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cosine_lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
