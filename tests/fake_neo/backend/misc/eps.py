"""Forge Neo's Epsilon Scaling (Settings > Stable Diffusion > "Epsilon Scaling", ``opts.scaling_factor``).

Own re-implementation; mirrors backend/misc/eps.py: EpsilonScaling.patch (Forge Neo; the file is not in
the search index under Haoming02/sd-webui-forge-classic: read in a copy of Neo's backend,
teshu2you/Meanvon 6416ba9a, and imported as ``backend.misc.eps`` by Neo's modules/sd_models.py 030519a0):
a clone of the UnetPatcher with one post-CFG function, ``x - (x - denoised) / scaling_factor``.
"""

from __future__ import annotations

from typing import Any


# mirrors backend/misc/eps.py: EpsilonScaling (Forge Neo)
class EpsilonScaling:
    @staticmethod
    def patch(model: Any, scaling_factor: float) -> Any:
        def epsilon_scaling_function(args: dict) -> Any:
            x = args["input"]
            return x - (x - args["denoised"]) / scaling_factor

        m = model.clone()
        m.set_model_sampler_post_cfg_function(epsilon_scaling_function)
        return m
