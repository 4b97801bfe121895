"""Lumina 2 ``sd_model`` as in Forge Neo: one Gemma 2 engine, ``text_processing_engine_gemma``.

Own re-implementation; mirrors backend/diffusion_engine/lumina.py: Lumina2 (Forge Neo 0b824fed). Engine:
the simulated T5-layout engine padded to 32 tokens; network: tests/fake_neo/tiny_dit.py (Lumina's
NextDiT layout was not read).
"""

from __future__ import annotations

from backend.diffusion_engine._text_dit import TextDiTEngine


# mirrors backend/diffusion_engine/lumina.py: Lumina2 (Forge Neo 0b824fed)
class Lumina2(TextDiTEngine):
    engine_attribute = "text_processing_engine_gemma"
    encoder_key = "gemma2"
    min_length = 32
