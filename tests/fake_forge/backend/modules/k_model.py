"""KModel: wraps the diffusion network and turns its output into x0 ("denoised").

Own re-implementation; mirrors backend/modules/k_model.py: KModel (Forge dfdcbab6). The SD1.5
network here is diffusers' UNet2DConditionModel (tests/tiny_models.py), called with
``encoder_hidden_states``; networks whose forward takes ``context`` (the Flux DiT) are called the Forge
way, ``(x, t, context=..., control=..., transformer_options=..., **extra_conds)``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from backend.modules.k_prediction import k_prediction_from_diffusers_scheduler


# mirrors backend/modules/k_model.py: KModel (Forge dfdcbab6)
class KModel(torch.nn.Module):
    def __init__(self, model: Any, diffusers_scheduler: Any, k_predictor: Any = None, config: Any = None) -> None:
        super().__init__()
        self.config = config
        self.storage_dtype = torch.float32
        self.computation_dtype = torch.float32
        self.diffusion_model = model
        self.predictor = (
            k_predictor if k_predictor is not None else k_prediction_from_diffusers_scheduler(diffusers_scheduler)
        )
        self._forge_style = "context" in inspect.signature(model.forward).parameters

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options={},  # noqa: B006 (Forge's signature)
        **kwargs: Any,
    ) -> torch.Tensor:
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        dtype = self.computation_dtype
        xc = xc.to(dtype)
        t = self.predictor.timestep(t).float()
        context = c_crossattn.to(dtype)
        extra_conds = {}
        for name, value in kwargs.items():
            if hasattr(value, "dtype") and value.dtype not in (torch.int, torch.long):
                value = value.to(dtype)
            extra_conds[name] = value

        if self._forge_style:
            model_output = self.diffusion_model(
                xc, t, context=context, control=control, transformer_options=transformer_options, **extra_conds
            )
        elif getattr(self.diffusion_model, "class_embedding", None) is not None:  # SDXL: ``y`` is the label
            model_output = self.diffusion_model(
                xc, t, encoder_hidden_states=context, class_labels=extra_conds["y"], return_dict=False
            )[0]
        else:  # diffusers UNet: extra conds (y, unknown keys) and control are swallowed, as Forge's UNet does
            model_output = self.diffusion_model(xc, t, encoder_hidden_states=context, return_dict=False)[0]
        return self.predictor.calculate_denoised(sigma, model_output.float(), x)

    def memory_required(self, input_shape: list[int]) -> float:
        # Forge's CPU branch (sub-quadratic attention, fp32): scaler 1.65, 4 bytes per element
        area = input_shape[0] * input_shape[2] * input_shape[3]
        return 1.65 * area * 4 * 16384
