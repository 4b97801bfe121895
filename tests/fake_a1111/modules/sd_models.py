"""Fake of modules/sd_models.py (1.10.1): only what the refiner switch calls. A checkpoint is a
``CheckpointInfo`` whose ``loader`` builds the model (the harness registers them)."""

from __future__ import annotations

import contextlib
from typing import Any

from modules import script_callbacks, shared


class SkipWritingToConfig(contextlib.nullcontext):
    """mirrors sd_models.py: SkipWritingToConfig (the fake has no config file to protect)."""


def reload_model_weights(sd_model: Any = None, info: Any = None, forced_reload: bool = False) -> Any:
    """mirrors sd_models.py: reload_model_weights (1.10.1): a different checkpoint replaces
    ``shared.sd_model`` (a new model object, as when the architecture differs) and fires on_model_loaded."""
    if info is None or shared.sd_model.sd_checkpoint_info == info:
        return shared.sd_model
    shared.sd_model = info.loader()
    script_callbacks.model_loaded_callback(shared.sd_model)
    return shared.sd_model
