"""Qwen-Image's Qwen2.5-VL prompt engine as in Forge Neo: the prompt inside a chat template, the
template's prefix cropped from the conditioning, no padding.

Own re-implementation; mirrors backend/text_processing/qwen_engine.py: QwenTextProcessingEngine (Forge
Neo 329d9d97, the ComfyUI-based version): ``llama_template``, ``tokenizer.tokenize_with_weights``, and
the crop of ``__call__`` (up to the second ``<|im_start|>``, then ``user``, ``\\n``). Not simulated: the
-Edit image template and image embeds. The encoder is the simulated T5 encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from backend.text_processing._comfy import IM_START, NEWLINE, QWEN_PAD, USER, SDTokenizer, encode_lines


# mirrors backend/text_processing/qwen_engine.py: QwenTextProcessingEngine (Forge Neo 329d9d97)
class QwenTextProcessingEngine:
    def __init__(self, text_encoder: Any, tokenizer: Any) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = SDTokenizer(tokenizer)
        self.llama_template = (
            "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.tokenizer(texts)["input_ids"]

    @staticmethod
    def _template_end(tokens: list[int]) -> int:
        template_end, count_im_start = -1, 0
        for i, token in enumerate(tokens):
            if token == IM_START and count_im_start < 2:
                template_end, count_im_start = i, count_im_start + 1
        if len(tokens) > template_end + 3 and tokens[template_end + 1] == USER and tokens[template_end + 2] == NEWLINE:
            template_end += 3
        return template_end

    def __call__(self, texts: list[str]) -> torch.Tensor:
        lines = []
        for text in texts:
            tokens = [t for t, _ in self.tokenizer.tokenize_with_weights(self.llama_template.format(text), True)[0]]
            lines.append(tokens[self._template_end(tokens) :])
        return encode_lines(self.text_encoder, lines, QWEN_PAD)
