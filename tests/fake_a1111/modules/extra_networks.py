"""Fake of modules/extra_networks.py (1.10.1): ``<name:args>`` tags are parsed out of prompts;
activation does nothing (there are no networks in the fake)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    """mirrors modules/extra_networks.py: ExtraNetworkParams (1.10.1)."""

    def __init__(self, items: list | None = None) -> None:
        self.items = items or []
        self.positional: list = []
        self.named: dict = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items


def parse_prompt(prompt: str) -> tuple[str, dict]:
    """mirrors modules/extra_networks.py: parse_prompt (1.10.1)."""
    found: dict[str, list] = defaultdict(list)

    def take(match: re.Match) -> str:
        found[match.group(1)].append(ExtraNetworkParams(items=match.group(2).split(":")))
        return ""

    return re_extra_net.sub(take, prompt), found


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict]:
    """mirrors modules/extra_networks.py: parse_prompts (1.10.1): the data of the *first* prompt."""
    stripped, extra_data = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        if extra_data is None:
            extra_data = data
        stripped.append(text)
    return stripped, extra_data


def activate(p: Any, extra_network_data: Any) -> None:
    """mirrors modules/extra_networks.py: activate (1.10.1) - no networks exist in the fake."""


def deactivate(p: Any, extra_network_data: Any) -> None:
    """mirrors modules/extra_networks.py: deactivate (1.10.1)."""
