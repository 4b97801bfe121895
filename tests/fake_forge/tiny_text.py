"""Tiny deterministic tokenizers and text encoders standing in for CLIP-L and T5-XXL (torch only).

Tokenizers are word-level with stable hashed ids (no vocabulary files):
- ``FakeCLIPTokenizer``: lower-cased words, single digits and punctuation runs; the last piece of a
  word ends with ``</w>``; words longer than 8 letters split into 4-letter pieces (a subject can
  span several tokens, as with CLIP BPE). BOS 49406, EOS = pad 49407, ``,</w>`` = 267.
- ``FakeT5Tokenizer``: SentencePiece-like, case kept, a word's first piece starts with ``▁``;
  punctuation is its own piece; pad 0, EOS 1.
Encoders: ``TinyCLIPTextModel`` (causal, 77 positions, returns every hidden state) and
``TinyT5Encoder`` (bidirectional, no mask: pads are attended, as in Forge's T5 call).
"""

from __future__ import annotations

import math
import re
import zlib

import torch
from torch import nn

CLIP_BOS, CLIP_EOS, CLIP_COMMA = 49406, 49407, 267
CLIP_VOCAB = 49408
T5_PAD, T5_EOS = 0, 1
T5_VOCAB = 32128

_CLIP_WORDS = re.compile(r"[^\W\d_]+|\d|[^\s\w]+|_+")
_T5_PIECES = re.compile(r"[^\W_]+|[^\s\w]|_")


def _hash(piece: str, modulo: int) -> int:
    return zlib.crc32(piece.encode("utf8")) % modulo


def _split_long(word: str) -> list[str]:
    return [word] if len(word) <= 8 else [word[i : i + 4] for i in range(0, len(word), 4)]


class FakeCLIPTokenizer:
    bos_token_id = CLIP_BOS
    eos_token_id = CLIP_EOS
    pad_token_id = CLIP_EOS

    @staticmethod
    def pieces(text: str) -> list[str]:
        out: list[str] = []
        for word in _CLIP_WORDS.findall(text.lower()):
            parts = _split_long(word)
            out += parts[:-1] + [parts[-1] + "</w>"]
        return out

    @staticmethod
    def piece_id(piece: str) -> int:
        return CLIP_COMMA if piece == ",</w>" else 1000 + _hash(piece, 47000)

    def __call__(self, texts: list[str], truncation: bool = False, add_special_tokens: bool = False) -> dict:
        ids = [[self.piece_id(p) for p in self.pieces(text)] for text in texts]
        if add_special_tokens:
            ids = [[CLIP_BOS] + row + [CLIP_EOS] for row in ids]
        return {"input_ids": ids}

    def get_vocab(self) -> dict[str, int]:
        vocab = {"<|startoftext|>": CLIP_BOS, "<|endoftext|>": CLIP_EOS, ",</w>": CLIP_COMMA}
        for piece in ("(</w>", ")</w>", "[</w>", "]</w>"):
            vocab[piece] = self.piece_id(piece)
        return vocab


class FakeT5Tokenizer:
    pad_token_id = T5_PAD
    eos_token_id = T5_EOS

    @staticmethod
    def pieces(text: str) -> list[str]:
        out: list[str] = []
        for word in text.split():
            for i, part in enumerate(_T5_PIECES.findall(word)):
                sub = _split_long(part) if part[0].isalnum() else [part]
                out += [("▁" if i == 0 and j == 0 else "") + s for j, s in enumerate(sub)]
        return out

    @staticmethod
    def piece_id(piece: str) -> int:
        return 2 + _hash(piece, 32000)

    def __call__(self, texts: list[str], truncation: bool = False, add_special_tokens: bool = False) -> dict:
        ids = [[self.piece_id(p) for p in self.pieces(text)] for text in texts]
        if add_special_tokens:
            ids = [row + [T5_EOS] for row in ids]
        return {"input_ids": ids}

    def get_vocab(self) -> dict[str, int]:
        return {"<pad>": T5_PAD, "</s>": T5_EOS}


def _affine_norm(width: int) -> nn.LayerNorm:
    """A final LayerNorm with a learned-looking affine part: its output mean is not ~0, which emphasis
    ("Original" rescales by the mean) needs, as with the real encoders."""
    norm = nn.LayerNorm(width)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(width))
        norm.bias.copy_(0.2 + 0.1 * torch.randn(width))
    return norm


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.norm2(x))


class TinyCLIPTextModel(nn.Module):
    """Causal encoder; ``forward`` returns all hidden states (embeddings output first)."""

    def __init__(self, width: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.token_embedding = nn.Embedding(CLIP_VOCAB, width)
        self.position_embedding = nn.Parameter(torch.randn(77, width) * 0.1)
        self.layers = nn.ModuleList([_Block(width, heads) for _ in range(layers)])
        self.final_layer_norm = _affine_norm(width)
        torch.random.set_rng_state(generator_state)
        self.eval()

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.position_embedding[: x.shape[1]]
        hidden = [x]
        for layer in self.layers:
            x = layer(x, causal=True)
            hidden.append(x)
        return hidden


class TinyT5Encoder(nn.Module):
    """Bidirectional encoder with sinusoidal positions; returns the final normed hidden state."""

    def __init__(self, width: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.shared = nn.Embedding(T5_VOCAB, width)
        self.layers = nn.ModuleList([_Block(width, heads) for _ in range(layers)])
        self.final_layer_norm = _affine_norm(width)
        torch.random.set_rng_state(generator_state)
        self.width = width
        self.eval()

    def _positions(self, n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, self.width, 2, dtype=torch.float32) / self.width)
        table = torch.zeros(n, self.width)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)
        return table * 0.1

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.shared(input_ids) + self._positions(input_ids.shape[1])
        for layer in self.layers:
            x = layer(x, causal=False)
        return self.final_layer_norm(x)
