"""Qwen-Image ``sd_model`` as in Forge Neo: one Qwen2.5-VL engine, ``text_processing_engine_qwen``.

Own re-implementation; mirrors backend/diffusion_engine/qwen.py: QwenImage (Forge Neo 0b824fed), text
to image only (no -Edit reference images). Engine: the simulated T5-layout engine padded to 32 tokens
(Neo's wraps the prompt in a template, crops it and does not pad); network: tests/fake_neo/tiny_dit.py.
"""

from __future__ import annotations

from backend.diffusion_engine._text_dit import TextDiTEngine


# mirrors backend/diffusion_engine/qwen.py: QwenImage (Forge Neo 0b824fed)
class QwenImage(TextDiTEngine):
    engine_attribute = "text_processing_engine_qwen"
    encoder_key = "qwen25_7b"
    min_length = 32

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.is_wan = True  # Neo: Qwen-Image decodes with the Wan VAE
