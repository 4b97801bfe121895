"""Z-Image ``sd_model`` as in Forge Neo: one Qwen3-4B engine stored as ``text_processing_engine_gemma``.

Own re-implementation; mirrors backend/diffusion_engine/zimage.py: ZImage (Forge Neo 0718ecf0). Engine:
tests/fake_neo/backend/text_processing/z_image_engine.py (chat template kept, no padding); network:
tests/fake_neo/backend/nn/lumina.py's NextDiT with ``pad_tokens_multiple``. Z-Image-Turbo runs at CFG 1.
"""

from __future__ import annotations

from typing import Any

from backend.diffusion_engine._text_dit import TextDiTEngine
from backend.text_processing.z_image_engine import Qwen34BEngine


# mirrors backend/diffusion_engine/zimage.py: ZImage (Forge Neo 0718ecf0)
class ZImage(TextDiTEngine):
    engine_attribute = "text_processing_engine_gemma"
    encoder_key = "qwen3"

    def text_engine(self, text_encoder: Any, tokenizer: Any) -> Any:
        return Qwen34BEngine(text_encoder, tokenizer)
