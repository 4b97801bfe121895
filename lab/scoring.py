"""Scores of generated scenes, all read from the judge's per-pixel labels.

- **fidelity** (per image, in [0, 1]): inside the subject's region (the pixels the judge reads as the
  subject's shape), the fraction whose colour *and* pattern are the subject's; 0 when the region is
  smaller than ``MIN_REGION`` pixels (no subject drawn).
- **editability** (per image, in [0, 1]): the mean of the context's named attributes: the fraction of
  background pixels of the prompt's background colour, the fraction of the prompt's texture, and,
  for two-object prompts, whether the other object is there (``MIN_REGION`` pixels of its shape
  and colour).
- **mask IoU / AUROC**: the mask DeGu used against the subject's region, both at the latent size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lab import judge as lab_judge
from lab import scenes
from lab.subjects import Subject

MIN_REGION = 12  # pixels of 32x32: a third of the smallest object the scenes draw


@dataclass(frozen=True)
class Context:
    """Where the subject is asked to be: the background, and optionally a second object."""

    background: str
    texture: str
    other: scenes.Thing | None = None  # shape and colour are what matter

    def prompt(self, subject_words: str) -> str:
        objects = f"a {subject_words}" + (f" and a {self.other.words()}" if self.other else "")
        return f"{objects} on a {self.texture} {self.background} background"

    def __str__(self) -> str:
        other = f"+{self.other.colour} {self.other.shape}" if self.other else ""
        return f"{self.texture} {self.background}{other}"


def subject_region(reading: lab_judge.Reading, subject: Subject) -> torch.Tensor:
    return reading.region == lab_judge.REGIONS.index(subject.shape)


def fidelity(reading: lab_judge.Reading, subject: Subject) -> torch.Tensor:
    region = subject_region(reading, subject)
    right = (reading.colour == lab_judge.COLOURS.index(subject.colour)) & (reading.striped == int(subject.striped))
    size = region.flatten(1).sum(1)
    share = (region & right).flatten(1).sum(1) / size.clamp_min(1)
    return torch.where(size >= MIN_REGION, share, torch.zeros_like(share))


def editability(reading: lab_judge.Reading, contexts: Sequence[Context]) -> torch.Tensor:
    """Per image (one context each): how much of the named context the judge reads in it."""
    def per_image(values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(values)[:, None, None]

    background = reading.region == 0
    count = background.flatten(1).sum(1).clamp_min(1)
    wanted_colour = per_image([lab_judge.BACKGROUNDS.index(c.background) for c in contexts])
    wanted_texture = per_image([scenes.TEXTURES.index(c.texture) for c in contexts])
    colour = (background & (reading.background == wanted_colour)).flatten(1).sum(1) / count
    texture = (background & (reading.texture == wanted_texture)).flatten(1).sum(1) / count
    other_shape = per_image([lab_judge.REGIONS.index(c.other.shape) if c.other else -1 for c in contexts])
    other_colour = per_image([lab_judge.COLOURS.index(c.other.colour) if c.other else -1 for c in contexts])
    other = ((reading.region == other_shape) & (reading.colour == other_colour)).flatten(1).sum(1) >= MIN_REGION
    has_other = torch.tensor([c.other is not None for c in contexts])
    return torch.where(has_other, (colour + texture + other.float()) / 3, (colour + texture) / 2)


def region_at_latent(region: torch.Tensor, size: int = 16) -> torch.Tensor:
    """(B, 32, 32) bool -> (B, size, size) bool: a latent pixel is subject when most of it is."""
    return F.adaptive_avg_pool2d(region.float()[:, None], size)[:, 0] > 0.5


def iou(mask: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image IoU of ``mask >= 0.5`` (B, 1, h, w) with ``region`` (B, h, w).

    NaN where the image has no subject region (the model did not draw the subject's shape): there
    is nothing to localise, and the mean is taken over the images that have one.
    """
    predicted = mask[:, 0] >= 0.5
    union = (predicted | region).flatten(1).sum(1)
    value = (predicted & region).flatten(1).sum(1) / union.clamp_min(1)
    return torch.where(region.flatten(1).any(1), value, torch.full_like(value, float("nan")))


def auroc(scores: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image AUROC of the map's values ranking subject pixels above the others (0.5: chance).

    NaN where the region is empty or covers everything.
    """
    out = []
    for values, positive in zip(scores.flatten(1), region.flatten(1), strict=True):
        pos, neg = values[positive], values[~positive]
        if len(pos) == 0 or len(neg) == 0:
            out.append(float("nan"))
            continue
        greater = (pos[:, None] > neg[None, :]).float().mean()
        ties = (pos[:, None] == neg[None, :]).float().mean()
        out.append(float(greater + 0.5 * ties))
    return torch.tensor(out)
