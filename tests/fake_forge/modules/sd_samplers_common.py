"""Sampler base class and helpers.

Own re-implementation; mirrors modules/sd_samplers_common.py (Forge dfdcbab6): SamplerData,
setup_img2img_steps, InterruptedException, apply_refiner (always "no refiner" here), store_latent,
Sampler (callback_state, launch_sampling, initialize).
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from typing import Any

import torch
from modules import shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


# mirrors modules/sd_samplers_common.py: SamplerData (Forge dfdcbab6)
class SamplerData(SamplerDataTuple):
    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.options.get("second_order", False) else steps


# mirrors modules/sd_samplers_common.py: setup_img2img_steps (Forge dfdcbab6)
def setup_img2img_steps(p: Any, steps: int | None = None) -> tuple[int, int]:
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


# mirrors modules/sd_samplers_common.py: InterruptedException (Forge dfdcbab6)
class InterruptedException(BaseException):
    pass


# mirrors modules/sd_samplers_common.py: apply_refiner (Forge dfdcbab6) -- the fake has no refiner
def apply_refiner(cfg_denoiser: Any, x: Any) -> bool:
    return False


# mirrors modules/sd_samplers_common.py: store_latent (Forge dfdcbab6)
def store_latent(decoded: Any) -> None:
    state.current_latent = decoded


# mirrors modules/sd_samplers_common.py: Sampler (Forge dfdcbab6)
class Sampler:
    def __init__(self, funcname: Any) -> None:
        self.funcname = funcname
        self.func = funcname
        self.extra_params: list[str] = []
        self.sampler_noises = None
        self.stop_at: int | None = None
        self.eta = None
        self.config: SamplerData | None = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0
        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0
        self.conditioning_key = "crossattn"
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options: dict = {}

    def callback_state(self, d: dict) -> None:
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps: int, func: Any) -> Any:
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except RecursionError:
            print("Encountered RecursionError during sampling, returning last latent.")
            return self.last_latent
        except InterruptedException:
            return self.last_latent

    def number_of_needed_noises(self, p: Any) -> int:
        return p.steps

    def initialize(self, p: Any) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0  # the denoiser's step counts model evaluations, reset per run
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        parameters = inspect.signature(self.func).parameters
        extra = {name: getattr(p, name) for name in self.extra_params if hasattr(p, name) and name in parameters}
        if "eta" in parameters:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            extra["eta"] = self.eta
        return extra


def sample_to_image(samples: torch.Tensor, index: int = 0, approximation: Any = None) -> torch.Tensor:
    return samples[index]
