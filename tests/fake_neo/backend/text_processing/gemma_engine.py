"""Lumina 2's Gemma 2 prompt engine as in Forge Neo: a system prompt from the settings before the
prompt, a start token, no padding.

Own re-implementation; mirrors backend/text_processing/gemma_engine.py: GemmaTextProcessingEngine (Forge
Neo b4ac2d82): ``process_template`` (``opts.neta_template_positive`` / ``_negative`` and a newline,
unless the prompt has ``<Prompt Start>``), ``tokenizer.tokenize_with_weights`` with start token 2.
Emphasis is not simulated. The encoder is the simulated T5 encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from backend.text_processing._comfy import GEMMA_START, SDTokenizer, encode_lines
from modules.shared import opts

# Neo's default system prompt for Lumina 2 / NetaYume (a setting there; its exact default was not read)
DEFAULT_POSITIVE = "You are an assistant designed to generate high-quality images based on user prompts. <Prompt Start>"
DEFAULT_NEGATIVE = (
    "You are an assistant designed to generate low-quality images based on textual prompts <Prompt Start>"
)


# mirrors backend/text_processing/gemma_engine.py: GemmaTextProcessingEngine (Forge Neo b4ac2d82)
class GemmaTextProcessingEngine:
    def __init__(self, text_encoder: Any, tokenizer: Any) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = SDTokenizer(tokenizer, start_token=GEMMA_START)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.tokenizer(texts)["input_ids"]

    @staticmethod
    def process_template(text: str, is_negative: bool) -> str:
        if "<Prompt Start>" in text:
            return text
        positive = getattr(opts, "neta_template_positive", DEFAULT_POSITIVE)
        negative = getattr(opts, "neta_template_negative", DEFAULT_NEGATIVE)
        return "\n".join([negative if is_negative else positive, text])

    def __call__(self, texts: list[str]) -> torch.Tensor:
        negative = bool(getattr(texts, "is_negative_prompt", False))
        lines = [
            [t for t, _ in self.tokenizer.tokenize_with_weights(self.process_template(text, negative), True)[0]]
            for text in texts
        ]
        return encode_lines(self.text_encoder, lines, 0)
