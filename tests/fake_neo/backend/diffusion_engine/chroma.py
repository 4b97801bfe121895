"""Chroma ``sd_model`` as in Forge Neo: T5 only (``text_processing_engine_t5``, padded to 1), tensor
conds, a Flux-block DiT, real CFG with a negative prompt.

Own re-implementation; mirrors backend/diffusion_engine/chroma.py: Chroma (Forge Neo 0b824fed).
"""

from __future__ import annotations

from backend.diffusion_engine._text_dit import TextDiTEngine


# mirrors backend/diffusion_engine/chroma.py: Chroma (Forge Neo 0b824fed)
class Chroma(TextDiTEngine):
    is_chroma = True
