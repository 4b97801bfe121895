"""CPU-only device helpers. Minimal stand-in for modules/devices.py (Forge dfdcbab6)."""

from __future__ import annotations

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32


# mirrors modules/devices.py: autocast (Forge dfdcbab6) -- a no-op on CPU
def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def torch_gc() -> None:
    return None


def test_for_nans(x: torch.Tensor, where: str) -> None:
    return None
