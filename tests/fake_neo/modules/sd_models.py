"""The simulated Forge's modules/sd_models.py, with Forge Neo's ``apply_token_merging``.

Own re-implementation; ``apply_token_merging`` mirrors modules/sd_models.py (Forge Neo 030519a0): after
ToMe (not simulated) it applies Epsilon Scaling when ``opts.scaling_factor > 1.0`` on an EPS model,
replacing ``forge_objects.unet`` with ``EpsilonScaling.patch``'s clone. Neo's ``sample()`` (processing.py
050733fb, as the simulated Forge's) calls it right after the ``forge_objects`` reset and *before*
``process_before_every_sampling``: extensions, DeGu included, clone a patcher that already carries the
Epsilon Scaling post-CFG function. Everything else is the simulated Forge's module.
"""

from __future__ import annotations

from typing import Any

from backend import _forge
from modules.shared import opts

_FORGE = _forge.load("modules/sd_models.py")
CheckpointInfo = _FORGE.CheckpointInfo
ModelData = _FORGE.ModelData
model_data = _FORGE.model_data
forge_model_reload = _FORGE.forge_model_reload
apply_alpha_schedule_override = _FORGE.apply_alpha_schedule_override


def _model_type(sd_model: Any) -> str:
    """Neo reads ``sd_model.model_config.model_type.name`` (huggingface_guess); the simulated configs
    carry none, so it is read from the k-diffusion predictor."""
    kind = getattr(getattr(sd_model.model_config, "model_type", None), "name", None)
    if kind is not None:
        return kind
    prediction = sd_model.forge_objects.unet.model.predictor.prediction_type
    return {"eps": "EPS", "epsilon": "EPS", "v_prediction": "V_PREDICTION"}.get(prediction, "FLOW")


# mirrors modules/sd_models.py: apply_token_merging (Forge Neo 030519a0), without ToMe
def apply_token_merging(sd_model: Any, token_merging_ratio: float) -> None:
    scaling_factor = getattr(opts, "scaling_factor", 1.0)  # a Neo option (default 1.0) the simulated Forge lacks
    if scaling_factor > 1.0 and _model_type(sd_model) == "EPS":
        from backend.misc.eps import EpsilonScaling

        unet = sd_model.forge_objects.unet
        sd_model.forge_objects.unet = EpsilonScaling.patch(model=unet, scaling_factor=scaling_factor)
