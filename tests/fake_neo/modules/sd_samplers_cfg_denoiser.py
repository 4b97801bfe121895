"""The CFG denoiser every Forge Neo sampler calls.

Own re-implementation; mirrors modules/sd_samplers_cfg_denoiser.py: CFGDenoiser (Forge Neo, index id
54783146097). Neo's ``forward(..., **kwargs)`` passes ``kwargs["model_options"]`` (what a sampler put in
its ``extra_args``, e.g. the CFG++ samplers) to ``sampling_function`` as ``extra_model_options``. The rest
of ``forward`` is the simulated Forge's (Neo's other changes there -- 5-D inpaint sigma, refiner by
sigma, the Skip Early CFG bound -- are not simulated).
"""

from __future__ import annotations

from typing import Any

import torch
from backend import _forge
from backend.sampling.sampling_function import sampling_function

_FORGE = _forge.load("modules/sd_samplers_cfg_denoiser.py")
catenate_conds = _FORGE.catenate_conds
subscript_cond = _FORGE.subscript_cond


def _sampling_function_with_extras(self: Any, **kwargs: Any) -> tuple:
    return sampling_function(self, **kwargs, extra_model_options=getattr(self, "_extra_model_options", None))


_FORGE.sampling_function = _sampling_function_with_extras  # what Forge's forward calls, with Neo's extras


# mirrors modules/sd_samplers_cfg_denoiser.py: CFGDenoiser (Forge Neo)
class CFGDenoiser(_FORGE.CFGDenoiser):
    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        uncond: Any,
        cond: Any,
        cond_scale: float,
        s_min_uncond: float,
        image_cond: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        self._extra_model_options = kwargs.get("model_options", {})
        try:
            return super().forward(x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond)
        finally:
            self._extra_model_options = None
