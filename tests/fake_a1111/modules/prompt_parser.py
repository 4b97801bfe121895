"""Fake of modules/prompt_parser.py (1.10.1): prompt-editing schedules, AND composition, batching.

Re-implemented without lark: a small recursive-descent parser handles plain text, prompt editing
``[from:to:when]`` / ``[to:when]`` (nested too), alternation ``[a|b]`` and keeps emphasis brackets
as literal text; brackets that do not close are kept literally (the real grammar's fallback).
"""

from __future__ import annotations

import re
from collections import namedtuple
from dataclasses import dataclass

import torch

_NUMBER = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*$")


@dataclass
class _Edit:
    before: list | None
    after: list
    when: str
    step: int = 0  # resolved end step (set by the collecting walk)


@dataclass
class _Alternate:
    options: list


class _ScheduleParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def sequence(self, stops: str) -> list:
        items: list = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\" and self.pos + 1 < len(text):
                items.append(text[self.pos : self.pos + 2])
                self.pos += 2
                continue
            if char in stops:
                break
            group = None
            if char == "[":
                group = self._bracket()
            elif char == "(":
                group = self._paren()
            if group is None:
                items.append(char)
                self.pos += 1
            else:
                items.extend(group)
        return items

    def _parts(self, stops: str, close: str) -> tuple[list, list] | None:
        start = self.pos
        self.pos += 1
        parts, seps = [], []
        while True:
            parts.append(self.sequence(stops))
            if self.pos >= len(self.text):
                self.pos = start
                return None
            sep = self.text[self.pos]
            self.pos += 1
            if sep == close:
                return parts, seps
            seps.append(sep)

    def _bracket(self) -> list | None:
        start = self.pos
        found = self._parts(":|]", "]")
        if found is None:
            return None
        parts, seps = found
        if not seps:
            return ["[", *parts[0], "]"]
        if all(s == "|" for s in seps):
            return [_Alternate(parts)]
        last = parts[-1]
        if all(s == ":" for s in seps) and len(parts) in (2, 3) and all(isinstance(x, str) for x in last):
            number = _NUMBER.match("".join(last))
            if number is not None:
                before = parts[0] if len(parts) == 3 else None
                return [_Edit(before, parts[-2], number.group(1))]
        self.pos = start
        return None

    def _paren(self) -> list | None:
        start = self.pos
        found = self._parts(":)", ")")
        if found is None or len(found[0]) > 2:
            self.pos = start
            return None
        parts, _ = found
        return ["(", *parts[0], ")"] if len(parts) == 1 else ["(", *parts[0], ":", *parts[1], ")"]


def _walk(items: list):
    for item in items:
        if isinstance(item, _Edit):
            yield item
            yield from _walk(item.before or [])
            yield from _walk(item.after)
        elif isinstance(item, _Alternate):
            yield item
            for option in item.options:
                yield from _walk(option)


def _text_at(items: list, step: int) -> str:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Edit):
            out.append(_text_at((item.before or []) if step <= item.step else item.after, step))
        else:
            out.append(_text_at(item.options[(step - 1) % len(item.options)], step))
    return "".join(out)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """mirrors modules/prompt_parser.py: get_learned_conditioning_prompt_schedules (1.10.1).

    Returns, per prompt, ``[[end_at_step, text], ...]``; e.g. ``"a [b:.5] c"`` with 10 steps gives
    ``[[5, 'a  c'], [10, 'a b c']]``. In the hires pass (``hires_steps`` set, new scheduling) a number
    with a decimal point counts from 1.0 (1.5 = half of the hires pass), an integer from ``base_steps``.
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    def schedule(prompt: str) -> list:
        items = _ScheduleParser(prompt).sequence("")
        ends = {steps}
        for node in _walk(items):
            if isinstance(node, _Alternate):
                ends.update(range(1, steps + 1))
                continue
            value = float(node.when)
            if use_old_scheduling:
                value = value * steps if value < 1 else value
            elif "." in node.when:
                value = (value - flt_offset) * steps
            else:
                value = value - int_offset
            node.step = min(steps, int(value))
            if node.step >= 1:
                ends.add(node.step)
        return [[end, _text_at(items, end)] for end in sorted(ends)]

    unique = {prompt: schedule(prompt) for prompt in set(prompts)}
    return [unique[prompt] for prompt in prompts]


ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """mirrors modules/prompt_parser.py: SdConditioning (1.10.1) - a list of prompts plus size/negative flags."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None) -> None:
        super().__init__(prompts)
        source = prompts if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(source, "is_negative_prompt", False)
        self.width = width or getattr(source, "width", None)
        self.height = height or getattr(source, "height", None)


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """mirrors modules/prompt_parser.py: get_learned_conditioning (1.10.1).

    One ``model.get_learned_conditioning`` call per distinct prompt (all its schedule texts at once);
    returns ``list[list[ScheduledPromptConditioning]]`` whose ``cond`` is one prompt's ``(T, C)`` tensor
    (or a dict of per-key rows for dict conditionings).
    """
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    done: dict[str, list] = {}
    result = []
    for prompt, schedule in zip(prompts, schedules, strict=False):
        if prompt not in done:
            texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
            conds = model.get_learned_conditioning(texts)
            entries = []
            for i, (end_at_step, _) in enumerate(schedule):
                cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
                entries.append(ScheduledPromptConditioning(end_at_step, cond))
            done[prompt] = entries
        result.append(done[prompt])
    return result


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def get_multicond_prompt_list(prompts):
    """mirrors modules/prompt_parser.py: get_multicond_prompt_list (1.10.1).

    Returns ``(res_indexes, prompt_flat_list, prompt_indexes)``: per prompt a list of
    ``(index into the flat list, weight)`` per AND part; identical part texts share one index.
    """
    res_indexes = []
    prompt_indexes: dict[str, int] = {}
    prompt_flat_list = SdConditioning(prompts)
    prompt_flat_list.clear()

    for prompt in prompts:
        indexes = []
        for part in re_AND.split(prompt):
            match = re_weight.search(part)
            text, weight = match.groups() if match is not None else (part, 1.0)
            weight = 1.0 if weight is None else float(weight)
            if text not in prompt_indexes:
                prompt_indexes[text] = len(prompt_flat_list)
                prompt_flat_list.append(text)
            indexes.append((prompt_indexes[text], weight))
        res_indexes.append(indexes)

    return res_indexes, prompt_flat_list, prompt_indexes


class ComposableScheduledPromptConditioning:
    """mirrors modules/prompt_parser.py: ComposableScheduledPromptConditioning (1.10.1)."""

    def __init__(self, schedules, weight=1.0) -> None:
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    """mirrors modules/prompt_parser.py: MulticondLearnedConditioning (1.10.1)."""

    def __init__(self, shape, batch) -> None:
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """mirrors modules/prompt_parser.py: get_multicond_learned_conditioning (1.10.1)."""
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [
        [ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in parts] for parts in res_indexes
    ]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    """mirrors modules/prompt_parser.py: DictWithShape (1.10.1) - ``.shape`` is ``['crossattn'].shape``."""

    def __init__(self, x, shape=None) -> None:
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _entry_at(schedule, current_step: int):
    for entry in schedule:
        if current_step <= entry.end_at_step:
            return entry
    return schedule[0]  # the real code falls back to index 0 past the end


def reconstruct_cond_batch(c, current_step):
    """mirrors modules/prompt_parser.py: reconstruct_cond_batch (1.10.1) - one row per schedule."""
    first = c[0][0].cond
    if isinstance(first, dict):
        res = DictWithShape(
            {k: torch.zeros((len(c),) + v.shape, device=v.device, dtype=v.dtype) for k, v in first.items()}
        )
        for i, schedule in enumerate(c):
            for k, v in _entry_at(schedule, current_step).cond.items():
                res[k][i] = v
        return res

    res = torch.zeros((len(c),) + first.shape, device=first.device, dtype=first.dtype)
    for i, schedule in enumerate(c):
        res[i] = _entry_at(schedule, current_step).cond
    return res


def stack_conds(tensors):
    """mirrors modules/prompt_parser.py: stack_conds (1.10.1) - pads shorter rows by repeating their
    last token vector (in place in ``tensors``), then stacks."""
    token_count = max(t.shape[0] for t in tensors)
    for i, t in enumerate(tensors):
        missing = token_count - t.shape[0]
        if missing:
            tensors[i] = torch.vstack([t, t[-1:].repeat([missing, 1])])
    return torch.stack(tensors)


def reconstruct_multicond_batch(c, current_step):
    """mirrors modules/prompt_parser.py: reconstruct_multicond_batch (1.10.1).

    Returns ``(conds_list, tensor)``: ``conds_list[i] = [(row, weight), ...]`` per image, one pair per
    AND part; ``tensor`` stacks every part of every image in image order.
    """
    param = c.batch[0][0].schedules[0].cond
    rows, conds_list = [], []
    for parts in c.batch:
        image = []
        for part in parts:
            image.append((len(rows), part.weight))
            rows.append(_entry_at(part.schedules, current_step).cond)
        conds_list.append(image)

    if isinstance(rows[0], dict):
        stacked = DictWithShape({k: stack_conds([r[k] for r in rows]) for k in rows[0]})
    else:
        stacked = stack_conds(rows).to(device=param.device, dtype=param.dtype)
    return conds_list, stacked


_ATTENTION_TOKEN = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:\s*([+-]?[.\d]+)\s*\)|[)\]]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """mirrors modules/prompt_parser.py: parse_prompt_attention (1.10.1).

    ``[[text, weight], ...]``: ``(x)`` x1.1, ``(x:w)`` xw, ``[x]`` /1.1, ``\\(`` etc. literal,
    ``BREAK`` as ``["BREAK", -1]``; neighbours with equal weight merged.
    """
    res: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(res))
        elif token == "[":
            open_square.append(len(res))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), 1.1)
        elif token == "]" and open_square:
            scale(open_square.pop(), 1 / 1.1)
        else:
            for i, piece in enumerate(_BREAK.split(token)):
                if i:
                    res.append(["BREAK", -1])
                res.append([piece, 1.0])

    for start in open_round:
        scale(start, 1.1)
    for start in open_square:
        scale(start, 1 / 1.1)

    if not res:
        res = [["", 1.0]]

    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged
