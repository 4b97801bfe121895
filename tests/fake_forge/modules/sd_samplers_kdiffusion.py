"""k-diffusion style samplers (Euler, Heun) over Forge's CFG denoiser.

Own re-implementation; mirrors modules/sd_samplers_kdiffusion.py: CFGDenoiserKDiffusion,
KDiffusionSampler (get_sigmas, sample, sample_img2img), and k_diffusion/external.py:
ForgeScheduleLinker + k_diffusion/sampling.py: sample_euler / sample_heun (Forge dfdcbab6).
"""

from __future__ import annotations

import inspect
from typing import Any

import modules.shared as shared
import torch
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, sd_schedulers
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.shared import opts


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


# mirrors k_diffusion/sampling.py: sample_euler (Forge dfdcbab6), without churn noise
@torch.no_grad()
def sample_euler(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: Any = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


# mirrors k_diffusion/sampling.py: sample_heun (Forge dfdcbab6), without churn noise
@torch.no_grad()
def sample_heun(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: Any = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


samplers_k_diffusion = [
    ("Euler", sample_euler, ["k_euler"], {}),
    ("Heun", sample_heun, ["k_heun"], {"second_order": True}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_k_diffusion
]

sampler_extra_params = {
    sample_euler: ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    sample_heun: ["s_churn", "s_tmin", "s_tmax", "s_noise"],
}


# mirrors k_diffusion/external.py: ForgeScheduleLinker (Forge dfdcbab6)
class ForgeScheduleLinker(torch.nn.Module):
    def __init__(self, predictor: Any) -> None:
        super().__init__()
        self.predictor = predictor

    @property
    def sigmas(self) -> torch.Tensor:
        return self.predictor.sigmas

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.predictor.sigmas.log()

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        if n is None:
            return _append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return _append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma: torch.Tensor, quantize: Any = None) -> torch.Tensor:
        return self.predictor.timestep(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.predictor.sigma(t)


# mirrors modules/sd_samplers_kdiffusion.py: CFGDenoiserKDiffusion (Forge dfdcbab6)
class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self) -> ForgeScheduleLinker:
        if self.model_wrap is None:
            self.model_wrap = ForgeScheduleLinker(shared.sd_model.forge_objects.unet.model.predictor)
            # the sd_model itself: sampling_function reads .forge_objects.unet at every call
            self.model_wrap.inner_model = shared.sd_model
        return self.model_wrap


# mirrors modules/sd_samplers_kdiffusion.py: KDiffusionSampler (Forge dfdcbab6)
class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: Any, sd_model: Any, options: dict | None = None) -> None:
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0

        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)

        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        elif scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            if not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            kwargs = {"sigma_min": self.model_wrap.sigmas[0].item(), "sigma_max": self.model_wrap.sigmas[-1].item()}
            if scheduler.need_inner_model:
                kwargs["inner_model"] = self.model_wrap
            sigmas = scheduler.function(n=steps, **kwargs, device=torch.device("cpu"))

        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

    def sample_img2img(
        self,
        p: Any,
        x: torch.Tensor,
        noise: torch.Tensor,
        conditioning: Any,
        unconditional_conditioning: Any,
        steps: int | None = None,
        image_conditioning: Any = None,
    ) -> torch.Tensor:
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x=x)

        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps).to(x.device)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        x = x.to(noise)
        xi = self.model_wrap.predictor.noise_scaling(sigma_sched[0], noise, x, max_denoise=False)

        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            xi = xi + params.noise * opts.img2img_extra_noise

        extra_params_kwargs = self.initialize(p)
        if "sigmas" in inspect.signature(self.func).parameters:
            extra_params_kwargs["sigmas"] = sigma_sched

        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        samples = self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )
        sampling_cleanup(unet_patcher)
        return samples

    def sample(
        self,
        p: Any,
        x: torch.Tensor,
        conditioning: Any,
        unconditional_conditioning: Any,
        steps: int | None = None,
        image_conditioning: Any = None,
    ) -> torch.Tensor:
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x=x)

        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps).to(x.device)
        x = self.model_wrap.predictor.noise_scaling(
            sigmas[0], x, torch.zeros_like(x), max_denoise=opts.sgm_noise_multiplier
        )

        extra_params_kwargs = self.initialize(p)
        if "sigmas" in inspect.signature(self.func).parameters:
            extra_params_kwargs["sigmas"] = sigmas

        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        samples = self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **extra_params_kwargs,
            ),
        )
        sampling_cleanup(unet_patcher)
        return samples
