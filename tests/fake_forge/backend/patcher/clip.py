"""Text-encoder holder of ``forge_objects.clip``.

Minimal stand-in for backend/patcher/clip.py: CLIP (Forge dfdcbab6): ``cond_stage_model.<key>`` and
``tokenizer.<key>`` per encoder, and a ``patcher`` (a ModelPatcher) that memory management loads.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from backend.patcher.base import ModelPatcher


# mirrors backend/patcher/clip.py: CLIP (Forge dfdcbab6)
class CLIP:
    def __init__(self, model_dict: dict[str, Any], tokenizer_dict: dict[str, Any], no_init: bool = False) -> None:
        self.cond_stage_model = torch.nn.Module()
        for key, module in model_dict.items():
            self.cond_stage_model.add_module(key, module)
        self.tokenizer = SimpleNamespace(**tokenizer_dict)
        self.patcher = ModelPatcher(self.cond_stage_model, load_device="cpu", offload_device="cpu")
