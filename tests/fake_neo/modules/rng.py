"""Per-seed noise, as in the simulated Forge, plus video latents for Wan.

Own re-implementation of modules/rng.py: ImageRNG (Forge Neo): the simulated Forge's ImageRNG; when the
model has ``latent_frames`` (the simulated Wan's knob) the noise is (C, T, H, W) per image.
"""

from __future__ import annotations

from typing import Any

from backend import _forge
from modules import shared

_FORGE = _forge.load("modules/rng.py")


class ImageRNG(_FORGE.ImageRNG):
    def __init__(self, shape: tuple, seeds: list[int], *args: Any, **kwargs: Any) -> None:
        frames = getattr(shared.sd_model, "latent_frames", None)
        if frames and len(shape) == 3:
            shape = (shape[0], frames, *shape[1:])
        super().__init__(shape, seeds, *args, **kwargs)
