"""VAE holder of ``forge_objects.vae``. No real VAE: images are the latents themselves.

Minimal stand-in for backend/patcher/vae.py: VAE (Forge dfdcbab6).
"""

from __future__ import annotations

import torch


# mirrors backend/patcher/vae.py: VAE (Forge dfdcbab6) -- identity encode/decode
class VAE:
    def __init__(self, latent_channels: int = 4) -> None:
        self.latent_channels = latent_channels
        self.first_stage_model = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z
