"""Attribute helpers used by the patchers."""

# mirrors backend/utils.py: get_attr / set_attr_raw (Forge dfdcbab6)

from __future__ import annotations

from typing import Any


def get_attr(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr_raw(obj: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, last, value)
