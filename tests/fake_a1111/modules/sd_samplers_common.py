"""Fake of modules/sd_samplers_common.py (1.10.1): SamplerData, InterruptedException and the
Sampler base class (initialize / launch_sampling / callback_state), the refiner switch. No VAE."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from modules import shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    """mirrors modules/sd_samplers_common.py: SamplerData (1.10.1)."""

    def total_steps(self, steps: int) -> int:
        """Denoiser calls per ``steps``: doubled for second-order samplers."""
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p: Any, steps: int | None = None) -> tuple[int, int]:
    """mirrors modules/sd_samplers_common.py: setup_img2img_steps (1.10.1) -> (steps, t_enc)."""
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        total = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        return total, requested - 1
    return p.steps, int(min(p.denoising_strength, 0.999) * p.steps)


class InterruptedException(BaseException):
    """mirrors modules/sd_samplers_common.py: InterruptedException (1.10.1) - a BaseException."""


def apply_refiner(cfg_denoiser: Any, sigma: Any = None) -> bool:
    """mirrors modules/sd_samplers_common.py: apply_refiner (1.10.1): once the completed ratio reaches
    ``p.refiner_switch_at``, loads the refiner checkpoint, recomputes the conds with it and resets
    the inner model; returns True if it switched (CFGDenoiser.forward then re-reads cond/uncond)."""
    import torch
    from modules import sd_models

    if opts.refiner_switch_by_sample_steps or sigma is None:
        completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
        cfg_denoiser.p.extra_generation_params["Refiner switch by sampling steps"] = True
    else:
        try:
            sigmas = cfg_denoiser.inner_model.sigmas
            timestep = torch.argmin(torch.abs(sigmas.to(sigma.device) - torch.max(sigma)))
        except AttributeError:  # timestep samplers (DDIM) pass the timestep itself
            timestep = torch.max(sigma).to(dtype=int)
        completed_ratio = (999 - timestep) / 1000

    refiner_switch_at = cfg_denoiser.p.refiner_switch_at
    refiner_checkpoint_info = cfg_denoiser.p.refiner_checkpoint_info
    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return False
    if refiner_checkpoint_info is None or shared.sd_model.sd_checkpoint_info == refiner_checkpoint_info:
        return False
    if getattr(cfg_denoiser.p, "enable_hr", False):
        is_second_pass = cfg_denoiser.p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and is_second_pass:
            return False
        if opts.hires_fix_refiner_pass == "second pass" and not is_second_pass:
            return False

    cfg_denoiser.p.extra_generation_params["Refiner"] = refiner_checkpoint_info.short_title
    cfg_denoiser.p.extra_generation_params["Refiner switch at"] = refiner_switch_at
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=refiner_checkpoint_info)
    cfg_denoiser.p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


def store_latent(decoded: Any) -> None:
    """mirrors modules/sd_samplers_common.py: store_latent (1.10.1) - no preview decoding."""
    state.current_latent = decoded


class Sampler:
    """mirrors modules/sd_samplers_common.py: Sampler (1.10.1), the parts every sampler shares."""

    def __init__(self, funcname: Any) -> None:
        self.funcname = funcname
        self.func = funcname
        self.extra_params: list[str] = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config: SamplerData | None = None  # set by sd_samplers.create_sampler
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0
        self.conditioning_key = getattr(shared.sd_model.model, "conditioning_key", "crossattn")
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options: dict = {}

    def callback_state(self, d: dict) -> None:
        """mirrors Sampler.callback_state (1.10.1): called by the k-diffusion loop after each step's
        denoiser call; ``state.sampling_step`` is the index of the step just evaluated."""
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps: int, func: Any) -> Any:
        """mirrors Sampler.launch_sampling (1.10.1): sets steps/total_steps, runs ``func``; an
        interrupt returns ``self.last_latent``; other exceptions propagate."""
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
        """mirrors Sampler.initialize (1.10.1): binds ``p``, copies the inpaint mask, resets ``step``."""
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, "mask") else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, "nmask") else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = getattr(p, "eta", None)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        return {}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        raise NotImplementedError

    def add_infotext(self, p: Any) -> None:
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True
        if self.model_wrap_cfg.padded_cond_uncond_v0:
            p.extra_generation_params["Pad conds v0"] = True
