"""Wan 2.2 ``sd_model`` as in Forge Neo: UMT5 engine as ``text_processing_engine_t5``, video latents
(B, 16, T, H, W).

Own re-implementation; mirrors backend/diffusion_engine/wan.py: Wan (Forge Neo 0b824fed), text to
video only. UMT5 is the simulated T5-layout engine padded to 64 tokens (Neo: 512). ``latent_frames`` is
a knob of the simulation (how Neo's UI sets the frame count was not read): the simulated ImageRNG
(tests/fake_neo/modules/rng.py) makes 5-D noise with that many frames.
"""

from __future__ import annotations

from backend.diffusion_engine._text_dit import TextDiTEngine


# mirrors backend/diffusion_engine/wan.py: Wan (Forge Neo 0b824fed)
class Wan(TextDiTEngine):
    encoder_key = "umt5xxl"
    min_length = 64
    latent_frames = 3

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.is_wan = True
