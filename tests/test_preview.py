"""Mask preview: the heat map and the per-image subject attention share."""

import pytest
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


def test_attention_share_is_the_mean_subject_mass_over_pixels_and_steps():
    guide = Guide(DeGuSettings(enabled=True, subject="sks", mask_source="attention"))
    u = s = g = torch.zeros(2, 4, 8, 8)
    # Maps that vary over the pixels (and differ per image), so a max, a median or a sum over the
    # pixels gives another number than the mean.
    first = torch.full((2, 4, 4), 0.1)
    first[0, 0, :2] = 0.9  # image 1: two hot pixels
    first[1] = torch.linspace(0.0, 0.3, 16).view(4, 4) ** 2
    second = torch.full((2, 4, 4), 0.3)
    second[1, 3, 3] = 0.7
    guide(u, s, g, cfg_scale=5.0, attention=first)
    guide(u, s, g, cfg_scale=5.0, attention=second)
    guide(u, s, g, cfg_scale=5.0, attention=None)  # a step without a map does not count
    expected = [(float(first[i].mean()) + float(second[i].mean())) / 2 for i in range(2)]
    assert guide.attention_share() == pytest.approx(expected, abs=1e-7)
    assert expected == pytest.approx([0.25, 0.178])  # (0.2 + 0.3) / 2 and (0.031 + 0.325) / 2
    assert Guide(DeGuSettings()).attention_share() is None
