"""Z-Image's Qwen3-4B prompt engine as in Forge Neo: the prompt inside a chat template, kept whole.

Own re-implementation; mirrors backend/text_processing/z_image_engine.py: Qwen34BEngine (Forge Neo
21886f41): ``llama_template``, ``tokenizer.tokenize_with_weights`` of the formatted line, no crop, no
padding. The encoder is the simulated T5 encoder (Neo: the second-to-last hidden state of Qwen3-4B).
"""

from __future__ import annotations

from typing import Any

import torch
from backend.text_processing._comfy import QWEN_PAD, SDTokenizer, encode_lines


# mirrors backend/text_processing/z_image_engine.py: Qwen34BEngine (Forge Neo 21886f41)
class Qwen34BEngine:
    def __init__(self, text_encoder: Any, tokenizer: Any) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = SDTokenizer(tokenizer)
        self.llama_template = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.tokenizer([self.llama_template.format(text) for text in texts])["input_ids"]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        lines = [
            [t for t, _ in self.tokenizer.tokenize_with_weights(self.llama_template.format(text), True)[0]]
            for text in texts
        ]
        return encode_lines(self.text_encoder, lines, QWEN_PAD)
