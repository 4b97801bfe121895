"""Qwen-Image ``sd_model`` as in Forge Neo: one Qwen2.5-VL engine, ``text_processing_engine_qwen``.

Own re-implementation; mirrors backend/diffusion_engine/qwen.py: QwenImage (Forge Neo 0b824fed), text
to image only (no -Edit reference images). Engine: tests/fake_neo/backend/text_processing/qwen_engine.py
(chat template, prefix cropped, no padding); network: tests/fake_neo/backend/nn/qwen.py.
"""

from __future__ import annotations

from typing import Any

from backend.diffusion_engine._text_dit import TextDiTEngine
from backend.text_processing.qwen_engine import QwenTextProcessingEngine


# mirrors backend/diffusion_engine/qwen.py: QwenImage (Forge Neo 0b824fed)
class QwenImage(TextDiTEngine):
    engine_attribute = "text_processing_engine_qwen"
    encoder_key = "qwen25_7b"

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.is_wan = True  # Neo: Qwen-Image decodes with the Wan VAE

    def text_engine(self, text_encoder: Any, tokenizer: Any) -> Any:
        return QwenTextProcessingEngine(text_encoder, tokenizer)
