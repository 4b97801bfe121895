"""Model conditions as Forge's batcher sees them.

Own re-implementation; every class/function mirrors backend/sampling/condition.py (Forge dfdcbab6).
"""

from __future__ import annotations

import math
from typing import Any

import torch


# mirrors backend/sampling/condition.py: repeat_to_batch_size (Forge dfdcbab6)
def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    rows = tensor.shape[0]
    if rows == batch_size:
        return tensor
    if rows > batch_size:
        return tensor[:batch_size]
    times = math.ceil(batch_size / rows)
    return tensor.repeat([times] + [1] * (tensor.ndim - 1))[:batch_size]


# mirrors backend/sampling/condition.py: lcm (Forge dfdcbab6)
def lcm(a: int, b: int) -> int:
    return abs(a * b) // math.gcd(a, b)


# mirrors backend/sampling/condition.py: Condition (Forge dfdcbab6)
class Condition:
    def __init__(self, cond: Any) -> None:
        self.cond = cond

    def _copy_with(self, cond: Any) -> Condition:
        return self.__class__(cond)

    def process_cond(self, batch_size: int, device: Any, **kwargs: Any) -> Condition:
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other: Condition) -> bool:
        return self.cond.shape == other.cond.shape

    def concat(self, others: list[Condition]) -> torch.Tensor:
        return torch.cat([self.cond] + [o.cond for o in others])


# mirrors backend/sampling/condition.py: ConditionNoiseShape (Forge dfdcbab6)
class ConditionNoiseShape(Condition):
    def process_cond(self, batch_size: int, device: Any, area: Any = None, **kwargs: Any) -> Condition:
        h, w, top, left = area
        cropped = self.cond[:, :, top : top + h, left : left + w]
        return self._copy_with(repeat_to_batch_size(cropped, batch_size).to(device))


# mirrors backend/sampling/condition.py: ConditionCrossAttn (Forge dfdcbab6)
class ConditionCrossAttn(Condition):
    def can_concat(self, other: Condition) -> bool:
        a, b = self.cond.shape, other.cond.shape
        if a == b:
            return True
        if a[0] != b[0] or a[2] != b[2]:
            return False
        # token lengths may differ when one tiles into the other at most 4 times
        return lcm(a[1], b[1]) // min(a[1], b[1]) <= 4

    def concat(self, others: list[Condition]) -> torch.Tensor:
        tensors = [self.cond] + [o.cond for o in others]
        length = tensors[0].shape[1]
        for t in tensors[1:]:
            length = lcm(length, t.shape[1])
        tiled = [t if t.shape[1] >= length else t.repeat(1, length // t.shape[1], 1) for t in tensors]
        return torch.cat(tiled)


# mirrors backend/sampling/condition.py: ConditionConstant (Forge dfdcbab6)
class ConditionConstant(Condition):
    def process_cond(self, batch_size: int, device: Any, **kwargs: Any) -> Condition:
        return self._copy_with(self.cond)

    def can_concat(self, other: Condition) -> bool:
        return not (self.cond != other.cond)

    def concat(self, others: list[Condition]) -> Any:
        return self.cond


# mirrors backend/sampling/condition.py: compile_conditions (Forge dfdcbab6)
def compile_conditions(cond: Any) -> list[dict] | None:
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [{"cross_attn": cond, "model_conds": {"c_crossattn": ConditionCrossAttn(cond)}}]
    crossattn, vector = cond["crossattn"], cond["vector"]
    entry = {
        "cross_attn": crossattn,
        "pooled_output": vector,
        "model_conds": {"c_crossattn": ConditionCrossAttn(crossattn), "y": Condition(vector)},
    }
    if "guidance" in cond:
        entry["model_conds"]["guidance"] = Condition(cond["guidance"])
    return [entry]


# mirrors backend/sampling/condition.py: compile_weighted_conditions (Forge dfdcbab6)
def compile_weighted_conditions(cond: Any, weights: list[list[tuple[int, float]]]) -> list[dict]:
    """One entry per AND position (zip over images, so the shortest image decides), holding that
    position's row of every image; its strength is the weight of the last image's part."""
    entries = []
    for position in zip(*weights, strict=False):
        rows = [index for index, _ in position]
        strength = position[-1][1] if position else 0
        rows_cond = cond.advanced_indexing(rows) if hasattr(cond, "advanced_indexing") else cond[rows]
        compiled = compile_conditions(rows_cond)
        compiled[0]["strength"] = strength
        entries += compiled
    return entries
