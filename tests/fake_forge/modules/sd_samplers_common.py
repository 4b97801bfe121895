"""Sampler base class and helpers.

Own re-implementation; mirrors modules/sd_samplers_common.py (Forge dfdcbab6): SamplerData,
setup_img2img_steps, InterruptedException, apply_refiner, store_latent,
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


# mirrors modules/sd_samplers_common.py: apply_refiner (Forge dfdcbab6). Once the share of the
# denoiser's model calls reaches p.refiner_switch_at, the refiner checkpoint is loaded in the middle of
# the pass: a new shared.sd_model with its own, unpatched UnetPatcher (any clone a script installed on
# the old model is dropped with it; process_before_every_sampling is not called again), the conds are
# recomputed and the denoiser's inner model rebuilt. The base checkpoint stays selected, so the next
# forge_model_reload (the next batch) loads it back.
def apply_refiner(cfg_denoiser: Any, x: Any) -> bool:
    from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
    from modules import extra_networks, sd_models

    p = cfg_denoiser.p
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    refiner_switch_at = p.refiner_switch_at
    refiner_checkpoint_info = p.refiner_checkpoint_info
    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return False
    if refiner_checkpoint_info is None or shared.sd_model.sd_checkpoint_info == refiner_checkpoint_info:
        return False
    if getattr(p, "enable_hr", False):
        is_second_pass = p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and is_second_pass:
            return False
        if opts.hires_fix_refiner_pass == "second pass" and not is_second_pass:
            return False
        if opts.hires_fix_refiner_pass != "second pass":
            p.extra_generation_params["Hires refiner"] = opts.hires_fix_refiner_pass
    p.extra_generation_params["Refiner"] = refiner_checkpoint_info.short_title
    p.extra_generation_params["Refiner switch at"] = refiner_switch_at

    sampling_cleanup(sd_models.model_data.get_sd_model().forge_objects.unet)
    selected = sd_models.model_data.forge_loading_parameters  # main_entry.checkpoint_change(...)
    sd_models.model_data.forge_loading_parameters = {**selected, "checkpoint_info": refiner_checkpoint_info}
    try:
        sd_models.forge_model_reload()
    finally:
        sd_models.model_data.forge_loading_parameters = selected

    if not p.disable_extra_networks:
        extra_networks.activate(p, p.extra_network_data)
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    sampling_prepare(sd_models.model_data.get_sd_model().forge_objects.unet, x=x)
    return True


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
