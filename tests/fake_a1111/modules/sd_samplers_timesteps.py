"""Fake of modules/sd_samplers_timesteps.py + sd_samplers_timesteps_impl.py (1.10.1): the CompVis
timestep samplers DDIM, DDIM CFG++ and PLMS. Their ``CFGDenoiserTimesteps`` is the same
``CFGDenoiser.forward`` fed timesteps instead of sigmas, returning noise predictions (eps), with the
inpaint blend before denoising. DDIM CFG++ sets ``cond_scale_miltiplier = 1/12.5`` and steps along
``last_noise_uncond``; PLMS calls the denoiser twice in its first step.

Omitted: UniPC (its wrapper calls the same ``CFGDenoiser.forward``), eta noise (eta = 0), v-prediction.
"""

from __future__ import annotations

import inspect
from typing import Any

import modules.shared as shared
import torch
from modules import sd_samplers_common
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.shared import opts


class CompVisTimestepsDenoiser(torch.nn.Module):
    """mirrors sd_samplers_timesteps.py: CompVisTimestepsDenoiser - eps = apply_model(x, t)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner_model = model

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(CFGDenoiser):
    """mirrors sd_samplers_timesteps.py: CFGDenoiserTimesteps (1.10.1)."""

    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


def _schedule(model: Any, timesteps: torch.Tensor, x: torch.Tensor):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """mirrors sd_samplers_timesteps_impl.py: ddim (1.10.1) with eta = 0."""
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(model, timesteps, x)
    extra_args = {} if extra_args is None else extra_args
    s_in, s_x = x.new_ones(x.shape[0]), x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


@torch.no_grad()
def ddim_cfgpp(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """mirrors sd_samplers_timesteps_impl.py: ddim_cfgpp (1.10.1) with eta = 0: CFG scale / 12.5, and
    the step direction is the uncond noise prediction."""
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(model, timesteps, x)
    model.cond_scale_miltiplier = 1 / 12.5
    model.need_last_noise_uncond = True
    extra_args = {} if extra_args is None else extra_args
    s_in, s_x = x.new_ones(x.shape[0]), x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        last_noise_uncond = model.last_noise_uncond
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * last_noise_uncond
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


@torch.no_grad()
def plms(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """mirrors sd_samplers_timesteps_impl.py: plms (1.10.1): two denoiser calls in the first step."""
    alphas, alphas_prev, sqrt_one_minus_alphas = _schedule(model, timesteps, x)
    extra_args = {} if extra_args is None else extra_args
    s_in, s_x = x.new_ones([x.shape[0]]), x.new_ones((x.shape[0], 1, 1, 1))
    old_eps: list[torch.Tensor] = []

    def x_prev_and_pred_x0(x, e_t, index):
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts, **extra_args)
        if len(old_eps) == 0:
            x_prev, _ = x_prev_and_pred_x0(x, e_t, index)
            e_t_prime = (e_t + model(x_prev, t_next, **extra_args)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = x_prev_and_pred_x0(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


class CompVisSampler(sd_samplers_common.Sampler):
    """mirrors sd_samplers_timesteps.py: CompVisSampler (1.10.1)."""

    def __init__(self, funcname: str, sd_model: Any) -> None:
        super().__init__(funcname)
        self.func = globals()[funcname]
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p: Any, steps: int) -> torch.Tensor:
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning) -> dict:
        return {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        self.initialize(p)
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg, x, timesteps, extra_args=self.sampler_extra_args, callback=self.callback_state
            ),
        )
        self.add_infotext(p)
        return samples

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        timesteps_sched = timesteps[:t_enc]
        alphas_cumprod = shared.sd_model.alphas_cumprod
        xi = x * torch.sqrt(alphas_cumprod[timesteps[t_enc]]) + noise * torch.sqrt(1 - alphas_cumprod[timesteps[t_enc]])
        self.initialize(p)
        assert "timesteps" in inspect.signature(self.func).parameters and opts.img2img_extra_noise == 0
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg, xi, timesteps_sched, extra_args=self.sampler_extra_args,
                callback=self.callback_state,
            ),
        )
        self.add_infotext(p)
        return samples


samplers_timesteps = [
    ("DDIM", "ddim", ["ddim"], {}),
    ("DDIM CFG++", "ddim_cfgpp", ["ddim_cfgpp"], {}),
    ("PLMS", "plms", ["plms"], {}),
]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_timesteps
]
