"""Mask preview: the heat map and the per-image subject attention share."""

import torch

from lib_degu.preview import heat_overlay
from lib_degu.settings import DeGuSettings
from lib_degu.step import Guide


def test_heat_overlay_colours_mask_one_red_and_zero_blue():
    image = torch.full((8, 16, 3), 100, dtype=torch.uint8)
    mask = torch.zeros(4, 8)
    mask[:, :4] = 1.0
    out = heat_overlay(image, mask, alpha=0.5)
    assert out.shape == (8, 16, 3) and out.dtype == torch.uint8
    assert out[4, 0].tolist() == [178, 50, 50]  # 0.5*100 + 0.5*255 red
    assert out[4, 15].tolist() == [50, 50, 178]


def test_attention_share_is_the_mean_subject_mass_over_steps():
    guide = Guide(DeGuSettings(enabled=True, subject="sks", mask_source="attention"))
    u = s = g = torch.zeros(2, 4, 8, 8)
    guide(u, s, g, cfg_scale=5.0, attention=torch.full((2, 4, 4), 0.2))
    guide(u, s, g, cfg_scale=5.0, attention=torch.full((2, 4, 4), 0.4))
    guide(u, s, g, cfg_scale=5.0, attention=None)  # a step without a map does not count
    assert [round(x, 6) for x in guide.attention_share()] == [0.3, 0.3]
    assert Guide(DeGuSettings()).attention_share() is None
