"""Anima ``sd_model`` as in Forge Neo: a Qwen3-0.6B encoder plus T5 token ids, one engine stored as
``text_processing_engine_anima`` whose conds are tensors padded to 512 tokens.

Own re-implementation; mirrors backend/diffusion_engine/anima.py: Anima (Forge Neo 0b824fed) and the
cond shape of backend/text_processing/anima_engine.py (Forge Neo 1be7cc27). Engine: the simulated
T5-layout engine padded to 64 tokens (Neo: 512, after its own preprocessing of the embeddings);
network: tests/fake_neo/tiny_dit.py. Reference images are not simulated.
"""

from __future__ import annotations

from backend.diffusion_engine._text_dit import TextDiTEngine


# mirrors backend/diffusion_engine/anima.py: Anima (Forge Neo 0b824fed)
class Anima(TextDiTEngine):
    engine_attribute = "text_processing_engine_anima"
    encoder_key = "qwen3_06b"
    min_length = 64

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.is_wan = True  # Neo: Anima decodes with the Wan VAE
