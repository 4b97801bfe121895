"""The mask preview: the final mask as a heat map over the generated image (pure torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def heat_overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """``image`` (H, W, 3) uint8, ``mask`` (h, w) in [0, 1] -> (H, W, 3) uint8.

    The mask is resized to the image; 1 (identity guidance) shows red, 0 (context guidance) blue.
    """
    height, width = image.shape[:2]
    m = F.interpolate(mask.float()[None, None].cpu(), size=(height, width), mode="bilinear", align_corners=False)
    m = m[0, 0].clamp(0, 1)[..., None]
    heat = torch.cat([m, torch.zeros_like(m), 1 - m], dim=-1) * 255
    blended = (1 - alpha) * image.float() + alpha * heat
    return blended.round().clamp(0, 255).to(torch.uint8)
