"""Noise schedules. Own re-implementation; mirrors modules/sd_schedulers.py: simple_scheduler and
the Scheduler record (Forge dfdcbab6). The fake offers Automatic (= the model's own discretisation)
and Simple."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: Any
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list | None = None


# mirrors modules/sd_schedulers.py: simple_scheduler (Forge dfdcbab6)
def simple_scheduler(n: int, sigma_min: float, sigma_max: float, inner_model: Any, device: Any) -> torch.Tensor:
    stride = len(inner_model.sigmas) / n
    sigmas = [float(inner_model.sigmas[-(1 + int(i * stride))]) for i in range(n)] + [0.0]
    return torch.FloatTensor(sigmas).to(device)


schedulers = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("simple", "Simple", simple_scheduler, need_inner_model=True),
]
schedulers_map = {**{s.name: s for s in schedulers}, **{s.label: s for s in schedulers}}
