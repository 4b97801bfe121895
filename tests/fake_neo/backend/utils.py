"""Attribute helpers (as in Forge) and Forge Neo's dict helpers.

Own re-implementation; ``join_dicts`` and ``deepcopy_`` mirror backend/utils.py (Forge Neo 1cc9077f);
``get_attr``/``set_attr_raw`` are the simulated Forge's (tests/fake_forge/backend/utils.py).
"""

from __future__ import annotations

from typing import Any

from backend import _forge

_FORGE = _forge.load("backend/utils.py")
get_attr = _FORGE.get_attr
set_attr_raw = _FORGE.set_attr_raw


# mirrors backend/utils.py: join_dicts (Forge Neo 1cc9077f)
def join_dicts(base_dict: dict | None, update_dict: dict | None) -> dict:
    """A new dict: dicts merged recursively, lists concatenated (base first), anything else from
    ``update_dict``."""
    result = dict(base_dict or {})
    for key, value in (update_dict or {}).items():
        if key in result and isinstance(result[key], dict) and isinstance(value, dict):
            result[key] = join_dicts(result[key], value)
        elif key in result and isinstance(result[key], list) and isinstance(value, list):
            result[key] = result[key] + value
        else:
            result[key] = value
    return result


# mirrors backend/utils.py: deepcopy_ (Forge Neo 1cc9077f)
def deepcopy_(obj: Any, memo: dict | None = None) -> Any:
    """Copies dicts and lists (recursively); every other object, functions included, is shared."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        result: Any = {deepcopy_(k, memo): deepcopy_(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        result = [deepcopy_(item, memo) for item in obj]
    else:
        result = obj
    memo[id(obj)] = result
    return result
