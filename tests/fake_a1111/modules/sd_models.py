"""Fake of modules/sd_models.py (1.10.1): only what the refiner switch calls. A checkpoint is a
``CheckpointInfo`` whose ``loader`` builds the model (the harness registers them)."""

from __future__ import annotations

import contextlib
from typing import Any

from modules import script_callbacks, shared


class SkipWritingToConfig(contextlib.nullcontext):
    """mirrors sd_models.py: SkipWritingToConfig (the fake has no config file to protect)."""


def reload_model_weights(sd_model: Any = None, info: Any = None, forced_reload: bool = False) -> Any:
    """mirrors sd_models.py: reload_model_weights (1.10.1). With the default ``sd_checkpoints_limit``
    of 1 and the same architecture, the new weights are loaded INTO the current model object
    (``load_model_weights``: same object, new ``sd_checkpoint_info``); otherwise (another
    architecture, or room for a second loaded model) a new model object replaces ``shared.sd_model``."""
    current = shared.sd_model
    if info is None or current.sd_checkpoint_info.filename == info.filename:
        return current
    loaded = info.loader()
    same_architecture = type(loaded) is type(current) and all(
        a.shape == b.shape for a, b in zip(loaded.state_dict().values(), current.state_dict().values(), strict=True)
    )
    if shared.opts.sd_checkpoints_limit <= 1 and same_architecture:
        current.load_state_dict(loaded.state_dict())
        current.cond_stage_model_empty_prompt = loaded.cond_stage_model_empty_prompt
        current.sd_checkpoint_info, current.sd_model_hash = info, loaded.sd_model_hash
    else:
        shared.sd_model = loaded
    script_callbacks.model_loaded_callback(shared.sd_model)
    return shared.sd_model
