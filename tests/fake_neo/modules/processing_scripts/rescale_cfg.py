"""Forge Neo's built-in Rescale CFG slider (Settings > UI Alternatives > "Display the Rescale CFG Slider").

Own re-implementation; mirrors modules/processing_scripts/rescale_cfg.py: ScriptRescaleCFG (Forge Neo; not
in the search index under Haoming02/sd-webui-forge-classic: read in Neo forks,
xxxqwerty337/sd-webui-forge-classic-1337 8343ece9 and AiWithYou/aikimi-forge-neo 85c960b9, and in
Haoming02's own ``classic`` branch 1f95d717, the same hook in all three): ``process_before_every_sampling``
clones the pass's UnetPatcher and sets ComfyUI's RescaleCFG as the **single-slot**
``set_model_sampler_cfg_function`` (it replaces the CFG formula; it is not a post-CFG function).
Not simulated: the UI (``opts.show_rescale_cfg``), the infotext, 8343ece9's ``p.rescale_cfg`` attribute
(the slider's value is the script's argument here, as in 1f95d717) and its skipping of the hires pass.
"""

from __future__ import annotations

from typing import Any

import torch
from modules import scripts


# mirrors modules/processing_scripts/rescale_cfg.py: ScriptRescaleCFG (Forge Neo), a ScriptBuiltinUI there
class ScriptRescaleCFG(scripts.Script):
    section = "cfg"
    create_group = False

    def title(self) -> str:
        return "RescaleCFG"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p: Any, cfg: float = 0.0, *args: Any, **kwargs: Any) -> None:
        if cfg < 0.05:
            return

        @torch.inference_mode()
        def rescale_cfg(args: dict) -> torch.Tensor:
            cond = args["cond"]
            uncond = args["uncond"]
            cond_scale = args["cond_scale"]
            sigma = args["sigma"]
            sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
            x_orig = args["input"]

            x = x_orig / (sigma * sigma + 1.0)
            cond = ((x - (x_orig - cond)) * (sigma**2 + 1.0) ** 0.5) / (sigma)
            uncond = ((x - (x_orig - uncond)) * (sigma**2 + 1.0) ** 0.5) / (sigma)

            x_cfg = uncond + cond_scale * (cond - uncond)
            ro_pos = torch.std(cond, dim=(1, 2, 3), keepdim=True)
            ro_cfg = torch.std(x_cfg, dim=(1, 2, 3), keepdim=True)

            x_rescaled = x_cfg * (ro_pos / ro_cfg)
            x_final = cfg * x_rescaled + (1.0 - cfg) * x_cfg

            return x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)

        unet = p.sd_model.forge_objects.unet.clone()
        unet.set_model_sampler_cfg_function(rescale_cfg)
        p.sd_model.forge_objects.unet = unet
