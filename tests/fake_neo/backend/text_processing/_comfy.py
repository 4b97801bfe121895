"""ComfyUI-style tokenizer plumbing of Forge Neo's chat-template engines, and a tiny chat tokenizer.

Own re-implementation. ``SDTokenizer.tokenize_with_weights`` mirrors the layout of
backend/text_processing/_comfy.py: SDTokenizer (Forge Neo f3472c36) as the Qwen-Image, Z-Image and
Lumina 2 engines configure it: no end token, no padding, a start token only where the engine has one
(Gemma: 2). ``ChatTokenizer`` stands in for the Qwen2.5 / Qwen3 / Gemma tokenizers (no vocabulary
files): the chat-template special tokens keep their real ids (``<|im_start|>`` 151644, ``user`` 872,
``\\n`` 198: Neo's Qwen engine crops its template by them); other words get stable hashed ids.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import torch

QWEN_PAD, IM_START, IM_END, USER, NEWLINE = 151643, 151644, 151645, 872, 198
GEMMA_START = 2
_SPECIAL = {"<|endoftext|>": QWEN_PAD, "<|im_start|>": IM_START, "<|im_end|>": IM_END, "\n": NEWLINE, "user": USER}
_PIECES = re.compile(r"<\|[a-z_]+\|>|<[A-Za-z ]+>|\n|[^\W_]+|[^\s\w]")


class ChatTokenizer:
    """Word-level, with the chat template's special tokens at their real ids."""

    @staticmethod
    def piece_id(piece: str) -> int:
        return _SPECIAL.get(piece, 1000 + zlib.crc32(piece.encode("utf8")) % 140000)

    def __call__(self, texts: list[str], **_: Any) -> dict:
        return {"input_ids": [[self.piece_id(p) for p in _PIECES.findall(text)] for text in texts]}


# mirrors backend/text_processing/_comfy.py: SDTokenizer.tokenize_with_weights (Forge Neo), the layout only
class SDTokenizer:
    def __init__(self, tokenizer: Any, start_token: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.start_token = start_token

    def tokenize_with_weights(self, text: str, disable_weights: bool = False) -> list[list[tuple[int, float]]]:
        ids = self.tokenizer([text])["input_ids"][0]
        if self.start_token is not None:
            ids = [self.start_token, *ids]
        return [[(token, 1.0) for token in ids]]


def encode_lines(encoder: Any, lines: list[list[int]], pad: int) -> torch.Tensor:
    """(prompts, longest, width): each line encoded on its own, shorter ones padded with ``pad``
    (Neo returns one tensor per prompt; the simulated processing needs one batch tensor)."""
    longest = max(len(line) for line in lines)
    vocab = encoder.shared.num_embeddings
    rows = [encoder(torch.tensor([[t % vocab for t in line + [pad] * (longest - len(line))]])) for line in lines]
    return torch.cat(rows)
