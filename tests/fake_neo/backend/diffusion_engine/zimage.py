"""Z-Image ``sd_model`` as in Forge Neo: one Qwen3-4B engine stored as ``text_processing_engine_gemma``.

Own re-implementation; mirrors backend/diffusion_engine/zimage.py: ZImage (Forge Neo 0718ecf0). The
engine is the simulated T5-layout engine padded to 32 tokens (Neo's Qwen3 engine wraps the prompt in a
chat template and does not pad: one tensor per prompt, lengths differ); the network is
tests/fake_neo/tiny_dit.py. Z-Image-Turbo runs at CFG 1.
"""

from __future__ import annotations

from backend.diffusion_engine._text_dit import TextDiTEngine


# mirrors backend/diffusion_engine/zimage.py: ZImage (Forge Neo 0718ecf0)
class ZImage(TextDiTEngine):
    engine_attribute = "text_processing_engine_gemma"
    encoder_key = "qwen3"
    min_length = 32
