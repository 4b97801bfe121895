"""Conditions and their compilation into batcher entries, as in Forge Neo.

Own re-implementation; mirrors backend/sampling/condition.py (Forge Neo bd7639af). The classes are the
simulated Forge's (unchanged in Neo); ``compile_conditions`` differs: every tensor of a dict cond other
than ``crossattn``/``vector``/``guidance`` becomes a model cond of its own (Neo: "model-specific extra
tensor conditions (e.g. token ids)").
"""

from __future__ import annotations

from typing import Any

import torch
from backend import _forge

_FORGE = _forge.load("backend/sampling/condition.py")
repeat_to_batch_size = _FORGE.repeat_to_batch_size
lcm = _FORGE.lcm
Condition = _FORGE.Condition
ConditionNoiseShape = _FORGE.ConditionNoiseShape
ConditionCrossAttn = _FORGE.ConditionCrossAttn
ConditionConstant = _FORGE.ConditionConstant


# mirrors backend/sampling/condition.py: compile_conditions (Forge Neo bd7639af)
def compile_conditions(cond: Any) -> list[dict] | None:
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [{"cross_attn": cond, "model_conds": {"c_crossattn": ConditionCrossAttn(cond)}}]
    crossattn, vector = cond["crossattn"], cond["vector"]
    model_conds = {"c_crossattn": ConditionCrossAttn(crossattn), "y": Condition(vector)}
    for key, value in cond.items():
        if key not in {"crossattn", "vector", "guidance"} and isinstance(value, torch.Tensor):
            model_conds[key] = Condition(value)
    entry = {"cross_attn": crossattn, "pooled_output": vector, "model_conds": model_conds}
    if "guidance" in cond:
        entry["model_conds"]["guidance"] = Condition(cond["guidance"])
    return [entry]


# mirrors backend/sampling/condition.py: compile_weighted_conditions (Forge Neo bd7639af; as Forge's)
def compile_weighted_conditions(cond: Any, weights: list[list[tuple[int, float]]]) -> list[dict]:
    entries = []
    for position in zip(*weights, strict=False):
        rows = [index for index, _ in position]
        strength = position[-1][1] if position else 0
        rows_cond = cond.advanced_indexing(rows) if hasattr(cond, "advanced_indexing") else cond[rows]
        compiled = compile_conditions(rows_cond)
        compiled[0]["strength"] = strength
        entries += compiled
    return entries
