"""Model loading hooks the processing loop and the refiner switch call.

Minimal stand-in for modules/sd_models.py (Forge dfdcbab6). ``forge_model_reload`` loads the
checkpoint selected in ``model_data.forge_loading_parameters`` when it is not the loaded one: a new
model object from the checkpoint's ``loader`` (as Forge builds a new one from the file), or, for the
harness's own model (no loader), the object the harness made, with fresh ``forge_objects``.
``apply_token_merging`` is a no-op (no ToMe).
"""

from __future__ import annotations

from typing import Any

from modules import shared


class CheckpointInfo:
    def __init__(self, name: str, loader: Any = None) -> None:
        self.loader = loader  # the fake's stand-in for the file: builds a new sd_model
        self.name = name
        self.name_for_extra = name
        self.title = name
        self.short_title = name
        self.filename = f"{name}.safetensors"
        self.sha256 = None

    def calculate_shorthash(self) -> str:
        return "0" * 10


# mirrors modules/sd_models.py: model_data (Forge dfdcbab6), the fields the reload reads
class ModelData:
    def __init__(self) -> None:
        self.sd_model: Any = None
        self.forge_loading_parameters: dict = {}
        self.harness_models: dict[str, Any] = {}  # checkpoint name -> the model the harness made

    def get_sd_model(self) -> Any:
        return shared.sd_model


model_data = ModelData()


# mirrors modules/sd_models.py: forge_model_reload (Forge dfdcbab6)
def forge_model_reload() -> tuple[Any, bool]:
    info = model_data.forge_loading_parameters.get("checkpoint_info")
    loaded = shared.sd_model
    if info is None or getattr(loaded, "sd_checkpoint_info", None) is info:
        return loaded, False
    if info.loader is not None:
        sd_model = info.loader()
        sd_model.extra_generation_params = {}
        sd_model.comments = []
        sd_model.sd_checkpoint_info = info
        sd_model.filename = info.filename
        sd_model.sd_model_hash = info.calculate_shorthash()
    else:
        sd_model = model_data.harness_models[info.name]
        sd_model.forge_objects = sd_model.forge_objects_original.shallow_copy()
    model_data.sd_model = shared.sd_model = sd_model
    return sd_model, True


# mirrors modules/sd_models.py: apply_token_merging (Forge dfdcbab6) -- ToMe is not simulated
def apply_token_merging(sd_model: Any, token_merging_ratio: float) -> None:
    return None


def apply_alpha_schedule_override(sd_model: Any, p: Any = None) -> None:
    return None
