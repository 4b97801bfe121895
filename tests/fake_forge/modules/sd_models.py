"""Model loading hooks the processing loop calls.

Minimal stand-in for modules/sd_models.py (Forge dfdcbab6): ``forge_model_reload`` returns the
current ``shared.sd_model`` (no reload), ``apply_token_merging`` is a no-op (no ToMe).
"""

from __future__ import annotations

from typing import Any

from modules import shared


class CheckpointInfo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.name_for_extra = name
        self.title = name
        self.short_title = name
        self.filename = f"{name}.safetensors"
        self.sha256 = None

    def calculate_shorthash(self) -> str:
        return "0" * 10


# mirrors modules/sd_models.py: forge_model_reload (Forge dfdcbab6) -- nothing to reload
def forge_model_reload() -> tuple[Any, bool]:
    return shared.sd_model, False


# mirrors modules/sd_models.py: apply_token_merging (Forge dfdcbab6) -- ToMe is not simulated
def apply_token_merging(sd_model: Any, token_merging_ratio: float) -> None:
    return None


def apply_alpha_schedule_override(sd_model: Any, p: Any = None) -> None:
    return None
