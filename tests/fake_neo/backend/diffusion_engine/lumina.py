"""Lumina 2 ``sd_model`` as in Forge Neo: one Gemma 2 engine, ``text_processing_engine_gemma``.

Own re-implementation; mirrors backend/diffusion_engine/lumina.py: Lumina2 (Forge Neo 0b824fed). Engine:
tests/fake_neo/backend/text_processing/gemma_engine.py (system prompt, start token, no padding); network:
tests/fake_neo/backend/nn/lumina.py's NextDiT.
"""

from __future__ import annotations

from typing import Any

from backend.diffusion_engine._text_dit import TextDiTEngine
from backend.text_processing.gemma_engine import GemmaTextProcessingEngine


# mirrors backend/diffusion_engine/lumina.py: Lumina2 (Forge Neo 0b824fed)
class Lumina2(TextDiTEngine):
    engine_attribute = "text_processing_engine_gemma"
    encoder_key = "gemma2"

    def text_engine(self, text_encoder: Any, tokenizer: Any) -> Any:
        return GemmaTextProcessingEngine(text_encoder, tokenizer)
