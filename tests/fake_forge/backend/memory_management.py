"""CPU-only stand-in for Forge's memory manager.

# mirrors backend/memory_management.py: load_models_gpu / unload_model_clones / unload_all_models
# (Forge dfdcbab6) -- only the observable part: loading a patcher applies its object patches, and
# loading another clone of the same model first restores the previous clone's patched attributes.
"""

from __future__ import annotations

from typing import Any

import torch

signal_empty_cache = False
current_loaded_models: list[Any] = []  # patchers, most recently loaded first


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def module_size(module: Any) -> int:
    if not isinstance(module, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    return torch.device("cpu")


def soft_empty_cache(force: bool = False) -> None:
    return None


def unload_model_clones(model: Any) -> None:
    for other in [m for m in current_loaded_models if m is not model and model.is_clone(m)]:
        other.forge_unpatch_model()
        current_loaded_models.remove(other)


def load_models_gpu(models: list[Any], memory_required: float = 0, hard_memory_preservation: float = 0) -> None:
    for patcher in models:
        if any(patcher is m for m in current_loaded_models):
            current_loaded_models.remove(patcher)
            current_loaded_models.insert(0, patcher)
            continue
        unload_model_clones(patcher)
        patcher.forge_patch_model()
        current_loaded_models.insert(0, patcher)


def load_model_gpu(model: Any) -> None:
    if model is not None:
        load_models_gpu([model])


def unload_all_models() -> None:
    for patcher in list(current_loaded_models):
        patcher.forge_unpatch_model()
    current_loaded_models.clear()
