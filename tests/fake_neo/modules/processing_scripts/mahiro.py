"""Forge Neo's built-in MaHiRo toggle (Settings > UI Alternatives > "Display the MaHiRo Toggle").

Own re-implementation; mirrors modules/processing_scripts/mahiro.py: ScriptMahiro (Forge Neo; the file is
not in the search index under Haoming02/sd-webui-forge-classic: read in Neo forks,
ussoewwin/Stable-Diffusion-WebUI-Forge-Nunchaku aa1f18fa and xxxqwerty337/sd-webui-forge-classic-1337
8343ece9, the same hook in both): ``process_before_every_sampling`` clones the pass's UnetPatcher and
appends ``mahiro_normd`` with ``set_model_sampler_post_cfg_function``. Not simulated: the UI (attached
means shown, ``opts.show_mahiro``), the infotext; 8343ece9 carries the toggle through ``p.mahiro``
(set in ``after_extra_networks_activate``), aa1f18fa through the script's argument, as here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from modules import scripts


# mirrors modules/processing_scripts/mahiro.py: ScriptMahiro (Forge Neo), a ScriptBuiltinUI there
class ScriptMahiro(scripts.Script):
    section = "cfg"
    create_group = False
    sorting_priority = 1

    def title(self) -> str:
        return "MaHiRo"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p: Any, enable: bool = False, *args: Any, **kwargs: Any) -> None:
        if not enable:
            return

        @torch.inference_mode()
        def mahiro_normd(args: dict) -> torch.Tensor:
            scale: float = args["cond_scale"]
            cond_p: torch.Tensor = args["cond_denoised"]
            uncond_p: torch.Tensor = args["uncond_denoised"]
            leap = cond_p * scale
            u_leap = uncond_p * scale
            cfg: torch.Tensor = args["denoised"]
            merge = (leap + cfg) / 2
            normu = torch.sqrt(u_leap.abs()) * u_leap.sign()
            normm = torch.sqrt(merge.abs()) * merge.sign()
            sim = F.cosine_similarity(normu, normm).mean()
            simsc = 2 * (sim + 1)
            return (simsc * cfg + (4 - simsc) * leap) / 4

        unet = p.sd_model.forge_objects.unet.clone()
        unet.set_model_sampler_post_cfg_function(mahiro_normd)
        p.sd_model.forge_objects.unet = unet
