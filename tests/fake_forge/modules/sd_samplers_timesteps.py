"""The CompVis timestep samplers: DDIM, DDIM CFG++ and PLMS.

Own re-implementation; mirrors modules/sd_samplers_timesteps.py: CompVisTimestepsDenoiser,
CFGDenoiserTimesteps, CompVisSampler, and modules/sd_samplers_timesteps_impl.py: ddim, ddim_cfgpp,
plms (Forge dfdcbab6). Unlike A1111's, Forge's ``CFGDenoiserTimesteps`` keeps the k-diffusion
``CFGDenoiser.forward`` and only sets ``classic_ddim_eps_estimation``: the forward turns the
timestep into the model's sigma, scales ``x`` from the VP latent to the k-diffusion one, guides the
x0 predictions as for every other sampler, and returns the noise prediction ``(x - denoised) / sigma``.
The denoiser's ``inner_model.inner_model`` is ``shared.sd_model``, given an ``alphas_cumprod`` made
from the predictor's sigmas.

Omitted: UniPC (Forge's ``UniPCCFG.model`` calls the same ``CFGDenoiser.forward``), the infotext the
real sampler adds, tqdm. DDIM CFG++ sets ``cond_scale_miltiplier`` as in Forge, where (unlike
A1111) nothing reads it.
"""

from __future__ import annotations

import inspect
from typing import Any

import modules.shared as shared
import torch
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
from modules import sd_samplers_common
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.shared import opts


def _schedule(model: Any, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha-bar at each timestep, at the previous one (in float64, as Forge does on the CPU), and
    sqrt(1 - alpha-bar)."""
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    previous = torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))
    alphas_prev = alphas_cumprod[previous].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


# mirrors modules/sd_samplers_timesteps_impl.py: ddim (Forge dfdcbab6)
@torch.no_grad()
def ddim(
    model: Any,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: Any = None,
    eta: float = 0.0,
) -> torch.Tensor:
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(model, timesteps)
    ratio = (1 - alphas_prev) / (1 - alphas.to(torch.float64)) * (1 - alphas.to(torch.float64) / alphas_prev)
    sigmas = eta * ratio.sqrt()
    extra_args = extra_args or {}
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        direction = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + direction + sigma_t * torch.randn_like(x)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


# mirrors modules/sd_samplers_timesteps_impl.py: ddim_cfgpp (Forge dfdcbab6), eta = 0 only
@torch.no_grad()
def ddim_cfgpp(
    model: Any,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: Any = None,
    eta: float = 0.0,
) -> torch.Tensor:
    assert eta == 0.0, "the fake's DDIM CFG++ has no eta noise"
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(model, timesteps)
    model.cond_scale_miltiplier = 1 / 12.5  # set, and (in Forge) never read
    model.need_last_noise_uncond = True
    extra_args = extra_args or {}
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        last_noise_uncond = model.last_noise_uncond
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * last_noise_uncond
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


# mirrors modules/sd_samplers_timesteps_impl.py: plms (Forge dfdcbab6)
@torch.no_grad()
def plms(
    model: Any,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: Any = None,
) -> torch.Tensor:
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(model, timesteps)
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    history: list[torch.Tensor] = []

    def step_from(x_t: torch.Tensor, e_t: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        pred_x0 = (x_t - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        t_now = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, t_now, **extra_args)
        if not history:  # pseudo improved Euler: a second denoiser call in the first step
            x_guess, _ = step_from(x, e_t, index)
            e_prime = (e_t + model(x_guess, t_next, **extra_args)) / 2
        elif len(history) == 1:  # Adams-Bashforth, orders 2 to 4
            e_prime = (3 * e_t - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x, pred_x0 = step_from(x, e_prime, index)
        history = [*history, e_t][-3:]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


# mirrors modules/sd_samplers_timesteps.py: CompVisTimestepsDenoiser (Forge dfdcbab6)
class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner_model = model
        predictor = model.forge_objects.unet.model.predictor
        self.inner_model.alphas_cumprod = 1.0 / (predictor.sigmas**2.0 + 1.0)

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, timesteps, **kwargs)


# mirrors modules/sd_samplers_timesteps.py: CFGDenoiserTimesteps (Forge dfdcbab6)
class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self.classic_ddim_eps_estimation = True

    @property
    def inner_model(self) -> CompVisTimestepsDenoiser:
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


# mirrors modules/sd_samplers_timesteps.py: CompVisSampler (Forge dfdcbab6)
class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: Any, sd_model: Any) -> None:
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_infotext_field = "Eta DDIM"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p: Any, steps: int) -> torch.Tensor:
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def _extra_args(self, p: Any, conditioning: Any, unconditional: Any, image_conditioning: Any) -> dict:
        return {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

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
        self.model_wrap.inner_model.alphas_cumprod = self.model_wrap.inner_model.alphas_cumprod.to(x.device)

        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps).to(x.device)
        timesteps_sched = timesteps[:t_enc]
        alphas_cumprod = shared.sd_model.alphas_cumprod
        sqrt_alpha = torch.sqrt(alphas_cumprod[timesteps[t_enc]])
        sqrt_one_minus_alpha = torch.sqrt(1 - alphas_cumprod[timesteps[t_enc]])
        xi = x.to(noise) * sqrt_alpha + noise * sqrt_one_minus_alpha

        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            xi = xi + params.noise * opts.img2img_extra_noise * sqrt_alpha

        extra_params_kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "timesteps" in parameters:
            extra_params_kwargs["timesteps"] = timesteps_sched
        if "is_img2img" in parameters:
            extra_params_kwargs["is_img2img"] = True

        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
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
        self.model_wrap.inner_model.alphas_cumprod = self.model_wrap.inner_model.alphas_cumprod.to(x.device)

        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps).to(x.device)
        extra_params_kwargs = self.initialize(p)
        if "timesteps" in inspect.signature(self.func).parameters:
            extra_params_kwargs["timesteps"] = timesteps

        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
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


samplers_timesteps = [
    ("DDIM", ddim, ["ddim"], {}),
    ("DDIM CFG++", ddim_cfgpp, ["ddim_cfgpp"], {}),
    ("PLMS", plms, ["plms"], {}),
]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_timesteps
]
