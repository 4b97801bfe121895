"""Prompt schedules, AND composition and cond reconstruction.

Own re-implementation; mirrors modules/prompt_parser.py (Forge dfdcbab6). Forge parses schedules
with a lark grammar; this fake handles plain prompts and *non-nested* edits ``[from:to:when]``,
``[to:when]``, ``[from::when]`` (same step semantics); nested edits and ``[a|b]`` alternation stay
literal text.
"""

from __future__ import annotations

import re
from collections import namedtuple
from typing import Any

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_TEXT = r"((?:[^\[\]:|()]|\([^()\[\]]*\))*)"  # text, where (emphasis:1.2) groups may hold colons
_EDIT = re.compile(
    r"\[" + _TEXT + ":" + _TEXT + r":\s*(" + _NUMBER + r")\s*\]|\[" + _TEXT + r":\s*(" + _NUMBER + r")\s*\]"
)


# mirrors modules/prompt_parser.py: get_learned_conditioning_prompt_schedules (Forge dfdcbab6)
def get_learned_conditioning_prompt_schedules(
    prompts: list[str], base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[list]]:
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    def when_of(text: str) -> int:
        value = float(text)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in text:
            value = (value - flt_offset) * steps
        else:
            value = value - int_offset
        return min(steps, int(value))

    def schedule(prompt: str) -> list[list]:
        edits = []  # (match, before, after, when)
        for m in _EDIT.finditer(prompt):
            if m.group(3) is not None:
                edits.append((m, m.group(1), m.group(2), when_of(m.group(3))))
            else:
                edits.append((m, "", m.group(4), when_of(m.group(5))))
        switch_steps = sorted({steps} | {when for *_, when in edits if when >= 1})

        def at(step: int) -> str:
            out, last = [], 0
            for m, before, after, when in edits:
                out.append(prompt[last : m.start()])
                out.append(before if step <= when else after)
                last = m.end()
            out.append(prompt[last:])
            return "".join(out)

        return [[step, at(step)] for step in switch_steps]

    cache = {prompt: schedule(prompt) for prompt in set(prompts)}
    return [cache[prompt] for prompt in prompts]


# mirrors modules/prompt_parser.py: SdConditioning (Forge dfdcbab6)
class SdConditioning(list):
    def __init__(
        self,
        prompts: list[str],
        is_negative_prompt: bool = False,
        width: int | None = None,
        height: int | None = None,
        copy_from: Any = None,
        distilled_cfg_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)
        self.distilled_cfg_scale = distilled_cfg_scale or getattr(copy_from, "distilled_cfg_scale", None)


# mirrors modules/prompt_parser.py: get_learned_conditioning (Forge dfdcbab6)
def get_learned_conditioning(
    model: Any,
    prompts: SdConditioning | list[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list]:
    res = []
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache: dict[str, list] = {}
    for prompt, prompt_schedule in zip(prompts, schedules, strict=True):
        if prompt in cache:
            res.append(cache[prompt])
            continue
        texts = SdConditioning([text for _, text in prompt_schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        cond_schedule = []
        for i, (end_at_step, _) in enumerate(prompt_schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            cond_schedule.append(ScheduledPromptConditioning(end_at_step, cond))
        cache[prompt] = cond_schedule
        res.append(cond_schedule)
    return res


re_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$")


def _split_weight(subprompt: str) -> tuple[str, float]:
    m = _TRAILING_WEIGHT.search(subprompt)
    if m is None:
        return subprompt.rstrip(), 1.0
    return subprompt[: m.start()], float(m.group(1))


# mirrors modules/prompt_parser.py: get_multicond_prompt_list (Forge dfdcbab6)
def get_multicond_prompt_list(prompts: SdConditioning | list[str]) -> tuple[list, SdConditioning, dict]:
    res_indexes = []
    prompt_indexes: dict[str, int] = {}
    prompt_flat_list = SdConditioning(prompts)
    prompt_flat_list.clear()
    for prompt in prompts:
        indexes = []
        for subprompt in re_AND.split(prompt):
            text, weight = _split_weight(subprompt)
            if text not in prompt_indexes:
                prompt_indexes[text] = len(prompt_flat_list)
                prompt_flat_list.append(text)
            indexes.append((prompt_indexes[text], weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


# mirrors modules/prompt_parser.py: ComposableScheduledPromptConditioning (Forge dfdcbab6)
class ComposableScheduledPromptConditioning:
    def __init__(self, schedules: list, weight: float = 1.0) -> None:
        self.schedules = schedules
        self.weight = weight


# mirrors modules/prompt_parser.py: MulticondLearnedConditioning (Forge dfdcbab6)
class MulticondLearnedConditioning:
    def __init__(self, shape: tuple, batch: list) -> None:
        self.shape = shape
        self.batch = batch


# mirrors modules/prompt_parser.py: get_multicond_learned_conditioning (Forge dfdcbab6)
def get_multicond_learned_conditioning(
    model: Any,
    prompts: SdConditioning | list[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> MulticondLearnedConditioning:
    res_indexes, prompt_flat_list, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, prompt_flat_list, steps, hires_steps, use_old_scheduling)
    batch = [
        [ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes] for indexes in res_indexes
    ]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


# mirrors modules/prompt_parser.py: DictWithShape (Forge dfdcbab6)
class DictWithShape(dict):
    def __init__(self, x: dict, shape: Any = None) -> None:
        super().__init__()
        self.update(x)

    @property
    def shape(self) -> torch.Size:
        return self["crossattn"].shape

    def to(self, *args: Any, **kwargs: Any) -> DictWithShape:
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(*args, **kwargs)
        return self

    def advanced_indexing(self, item: Any) -> DictWithShape:
        return DictWithShape({k: v[item] for k, v in self.items() if isinstance(v, torch.Tensor)})


def _pick(schedule: list, current_step: int) -> int:
    for index, entry in enumerate(schedule):
        if current_step <= entry.end_at_step:
            return index
    return 0  # past the last schedule: Forge falls back to the first one


# mirrors modules/prompt_parser.py: reconstruct_cond_batch (Forge dfdcbab6)
def reconstruct_cond_batch(c: list[list], current_step: int) -> Any:
    param = c[0][0].cond
    if isinstance(param, dict):
        res = DictWithShape(
            {k: torch.zeros((len(c),) + v.shape, device=v.device, dtype=v.dtype) for k, v in param.items()}
        )
    else:
        res = torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)
    for i, schedule in enumerate(c):
        cond = schedule[_pick(schedule, current_step)].cond
        if isinstance(param, dict):
            for k, v in cond.items():
                res[k][i] = v
        else:
            res[i] = cond
    return res


# mirrors modules/prompt_parser.py: stack_conds (Forge dfdcbab6)
def stack_conds(tensors: list[torch.Tensor]) -> torch.Tensor:
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    # prompts of different token lengths: repeat each shorter one's last vector
    longest = max(t.shape[0] for t in tensors)
    padded = [
        t if t.shape[0] == longest else torch.vstack([t, t[-1:].repeat(longest - t.shape[0], 1)]) for t in tensors
    ]
    return torch.stack(padded)


# mirrors modules/prompt_parser.py: reconstruct_multicond_batch (Forge dfdcbab6)
def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step: int) -> tuple[list, Any]:
    param = c.batch[0][0].schedules[0].cond
    tensors: list = []
    conds_list = []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            cond = composable.schedules[_pick(composable.schedules, current_step)].cond
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        stacked = DictWithShape({k: stack_conds([t[k] for t in tensors]) for k in tensors[0]})
    else:
        stacked = stack_conds(tensors).to(device=param.device, dtype=param.dtype)
    return conds_list, stacked
