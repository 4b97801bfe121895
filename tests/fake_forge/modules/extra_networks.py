"""``<name:args>`` extra-network tags: parsed and stripped; nothing is activated.

Own re-implementation; mirrors modules/extra_networks.py: ExtraNetworkParams, parse_prompt,
parse_prompts, activate, deactivate (Forge dfdcbab6) -- activation is a no-op (no LoRA in the fake).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items: list[str] | None = None) -> None:
        self.items = items or []
        self.positional = [x for x in self.items if "=" not in x]
        self.named = dict(x.split("=", 1) for x in self.items if "=" in x)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items


# mirrors modules/extra_networks.py: parse_prompt (Forge dfdcbab6)
def parse_prompt(prompt: str) -> tuple[str, defaultdict]:
    res: defaultdict = defaultdict(list)

    def found(m: re.Match) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re_extra_net.sub(found, prompt), res


# mirrors modules/extra_networks.py: parse_prompts (Forge dfdcbab6)
def parse_prompts(prompts: list[str]) -> tuple[list[str], Any]:
    res, extra_data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, extra_data


def activate(p: Any, extra_network_data: Any) -> None:
    return None


def deactivate(p: Any, extra_network_data: Any) -> None:
    return None
