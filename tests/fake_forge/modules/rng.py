"""Per-seed noise. Own re-implementation; mirrors modules/rng.py: ImageRNG (Forge dfdcbab6) without
subseed variation or seed resize: image i's first noise is ``randn`` from a generator seeded with
seeds[i]; later ``next()`` calls continue those generators."""

from __future__ import annotations

import torch
from modules import shared


# mirrors modules/rng.py: ImageRNG (Forge dfdcbab6)
class ImageRNG:
    def __init__(
        self,
        shape: tuple,
        seeds: list[int],
        subseeds: list[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
    ) -> None:
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(shared.device)

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(shared.device)
