"""Emphasis modes applied to the encoder output.

Own re-implementation; mirrors backend/text_processing/emphasis.py (Forge dfdcbab6).
"""

from __future__ import annotations

import torch


# mirrors backend/text_processing/emphasis.py: Emphasis (Forge dfdcbab6)
class Emphasis:
    name = "Base"
    description = ""
    tokens: list[list[int]]
    multipliers: torch.Tensor
    z: torch.Tensor

    def after_transformers(self) -> None:
        pass


class EmphasisNone(Emphasis):
    name = "None"
    description = "no emphasis: brackets are literal text"


class EmphasisIgnore(Emphasis):
    name = "Ignore"
    description = "parse emphasis but apply none"


class EmphasisOriginal(Emphasis):
    name = "Original"
    description = "scale by the multipliers, then restore the mean"

    def after_transformers(self) -> None:
        mean_before = self.z.mean()
        self.z = self.z * self.multipliers.unsqueeze(-1).expand(self.z.shape)
        self.z = self.z * (mean_before / self.z.mean())


class EmphasisOriginalNoNorm(EmphasisOriginal):
    name = "No norm"
    description = "scale by the multipliers only"

    def after_transformers(self) -> None:
        self.z = self.z * self.multipliers.unsqueeze(-1).expand(self.z.shape)


options = [EmphasisNone, EmphasisIgnore, EmphasisOriginal, EmphasisOriginalNoNorm]


# mirrors backend/text_processing/emphasis.py: get_current_option (Forge dfdcbab6)
def get_current_option(emphasis_option_name: str) -> type[Emphasis]:
    return next((option for option in options if option.name == emphasis_option_name), EmphasisOriginal)
