"""Loads a file of the simulated Forge (tests/fake_forge) as a private module of this overlay, so a
Neo file here reuses what Neo left as it was in Forge instead of copying it. Not a Neo file.

The private module is named ``backend._forge.<path>``; its own imports resolve through the overlay
(so a Forge helper that imports ``backend.sampling.condition`` gets Neo's).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

FORGE_ROOT = pathlib.Path(__file__).resolve().parents[2] / "fake_forge"


def load(relative: str) -> ModuleType:
    """``relative``: a path under tests/fake_forge, e.g. ``backend/sampling/condition.py``."""
    name = "backend._forge." + relative.removesuffix(".py").replace("/", ".")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FORGE_ROOT / relative)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
