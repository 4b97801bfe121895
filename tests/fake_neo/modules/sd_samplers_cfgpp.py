"""Forge Neo's CFG++ samplers: they reach the sampling function through ``extra_args["model_options"]``.

Own re-implementation; mirrors modules/sd_samplers_cfgpp.py: set_model_options_post_cfg_function,
sample_euler_cfg_pp (Forge Neo 251d2045): a post-CFG function records ``uncond_denoised`` and
``disable_cfg1_optimization`` is set, both in the options passed to ``CFGDenoiser.forward`` (Neo joins
them after the UnetPatcher's own). Where Neo lists this sampler was not read; the simulation offers it
as "Euler CFG++" (tests/fake_neo/modules/sd_samplers.py).
"""

from __future__ import annotations

from typing import Any

import torch


# mirrors modules/sd_samplers_cfgpp.py: set_model_options_post_cfg_function (Forge Neo 251d2045)
def set_model_options_post_cfg_function(
    model_options: dict, post_cfg_function: Any, disable_cfg1_optimization: bool = False
) -> dict:
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [
        post_cfg_function
    ]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


# mirrors modules/sd_samplers_cfgpp.py: sample_euler_cfg_pp (Forge Neo 251d2045)
@torch.no_grad()
def sample_euler_cfg_pp(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: Any = None,
) -> torch.Tensor:
    extra_args = {} if extra_args is None else extra_args
    temp: list[Any] = [0]

    def post_cfg_function(args: dict) -> torch.Tensor:
        temp[0] = args["uncond_denoised"]
        return args["denoised"]

    model_options = extra_args.get("model_options", {}).copy()
    extra_args["model_options"] = set_model_options_post_cfg_function(
        model_options, post_cfg_function, disable_cfg1_optimization=True
    )
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = (x - temp[0]) / sigma_hat
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = denoised + d * sigmas[i + 1]
    return x
