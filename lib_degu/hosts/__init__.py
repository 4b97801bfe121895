"""Host adapters. Each submodule is the only code that imports its WebUI's modules.

``detect_host()`` picks by capability (which modules import), never by version strings.
"""

from __future__ import annotations

import importlib.util


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect_host() -> str:
    """'forge' when Forge's backend is importable, 'a1111' when the A1111 CFG denoiser is, else 'none'."""
    if _has_module("backend.sampling.sampling_function"):
        return "forge"
    if _has_module("modules.sd_samplers_cfg_denoiser"):
        return "a1111"
    return "none"
