"""T5 prompt engine as in Forge Neo: ComfyUI-style, no ``tokenize_line``.

Own re-implementation; mirrors backend/text_processing/t5_engine.py: T5TextProcessingEngine (Forge Neo
037259cf) and the part of backend/text_processing/_comfy.py: SDTokenizer it uses
(``tokenize_with_weights``). The token layout is Forge's (no BOS, EOS 1, pad 0 to ``min_length``: 256,
Chroma 1) and so are the numbers: encoding is the simulated Forge engine's. What differs is the
interface: ``tokenize(texts)`` and ``tokenizer.tokenize_with_weights(text, disable_weights)``, no
``tokenize_line``.
"""

from __future__ import annotations

from typing import Any

import torch
from backend import _forge

_FORGE = _forge.load("backend/text_processing/t5_engine.py")


# mirrors backend/text_processing/_comfy.py: SDTokenizer.tokenize_with_weights (Forge Neo), the layout only
class SDTokenizer:
    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.tokenizer = engine.tokenizer

    def tokenize_with_weights(self, text: str, disable_weights: bool = False) -> list[list[tuple[int, float]]]:
        chunks, _ = self._engine.tokenize_line(text)
        return [
            [(token, 1.0 if disable_weights else weight) for token, weight in zip(c.tokens, c.multipliers, strict=True)]
            for c in chunks
        ]


# mirrors backend/text_processing/t5_engine.py: T5TextProcessingEngine (Forge Neo 037259cf)
class T5TextProcessingEngine:
    def __init__(self, text_encoder: Any, tokenizer: Any, *, is_chroma: bool = False, min_length: int = 256) -> None:
        self._forge = _FORGE.T5TextProcessingEngine(text_encoder, tokenizer, min_length=1 if is_chroma else min_length)
        self.tokenizer = SDTokenizer(self._forge)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._forge.tokenize(texts)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self._forge(texts)
