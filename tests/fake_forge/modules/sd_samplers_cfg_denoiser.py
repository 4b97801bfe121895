"""The CFG denoiser every Forge sampler calls.

Own re-implementation; mirrors modules/sd_samplers_cfg_denoiser.py: CFGDenoiser (Forge dfdcbab6).
As in Forge, ``forward`` goes through backend's ``sampling_function``; ``combine_denoised`` exists but
is never called and ``on_cfg_denoised`` callbacks are never fired. With ``classic_ddim_eps_estimation``
(the timestep samplers, modules/sd_samplers_timesteps.py) it takes a timestep and a VP latent and
returns a noise prediction.
"""

from __future__ import annotations

from typing import Any

import modules.shared as shared
import torch
from backend.sampling.sampling_function import sampling_function
from modules import prompt_parser, sd_samplers_common
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.shared import state


# mirrors modules/sd_samplers_cfg_denoiser.py: catenate_conds (Forge dfdcbab6)
def catenate_conds(conds: list) -> Any:
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


# mirrors modules/sd_samplers_cfg_denoiser.py: subscript_cond (Forge dfdcbab6)
def subscript_cond(cond: Any, a: int, b: int) -> Any:
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


# mirrors modules/sd_samplers_cfg_denoiser.py: CFGDenoiser (Forge dfdcbab6)
class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler: Any) -> None:
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p = None
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False
        self.classic_ddim_eps_estimation = False

    @property
    def inner_model(self) -> Any:
        raise NotImplementedError()

    def combine_denoised(
        self,
        x_out: torch.Tensor,
        conds_list: list,
        uncond: Any,
        cond_scale: float,
        timestep: Any = None,
        x_in: Any = None,
        cond: Any = None,
    ) -> torch.Tensor:
        """Legacy (A1111) combination; Forge never calls it."""
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def get_pred_x0(self, x_in: torch.Tensor, x_out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x_out

    def update_inner_model(self) -> None:
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        uncond: Any,
        cond: Any,
        cond_scale: float,
        s_min_uncond: float,
        image_cond: Any,
    ) -> torch.Tensor:
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        original_x_device, original_x_dtype = x.device, x.dtype

        if self.classic_ddim_eps_estimation:
            # the timestep samplers: timestep -> the model's sigma, VP latent -> k-diffusion latent
            acd = self.inner_model.inner_model.alphas_cumprod
            fake_sigmas = ((1 - acd) / acd) ** 0.5
            real_sigma = fake_sigmas[sigma.round().long().clip(0, int(fake_sigmas.shape[0]))]
            x = x * ((real_sigma**2.0 + 1.0) ** 0.5)[:, None, None, None]  # sigma_data = 1
            sigma = real_sigma

        if sd_samplers_common.apply_refiner(self, x):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

        if self.mask is not None:
            predictor = self.inner_model.inner_model.forge_objects.unet.model.predictor
            noise = torch.randn_like(self.init_latent).to(self.init_latent)
            noisy_initial_latent = predictor.noise_scaling(
                sigma[:, None, None, None], noise, self.init_latent, max_denoise=False
            )
            x = x * self.nmask + noisy_initial_latent * self.mask

        denoiser_params = CFGDenoiserParams(
            x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self
        )
        cfg_denoiser_callback(denoiser_params)

        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg

        if shared.opts.skip_early_cond > 0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
        elif (self.step % 2 or shared.opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if shared.opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = shared.opts.s_min_uncond_all

        denoised, cond_pred, uncond_pred = sampling_function(
            self, denoiser_params=denoiser_params, cond_scale=cond_scale, cond_composition=cond_composition
        )

        if self.need_last_noise_uncond:
            self.last_noise_uncond = (x - uncond_pred) / sigma[:, None, None, None]

        if self.mask is not None:
            blended_latent = denoised * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                from modules import scripts

                mba = scripts.MaskBlendArgs(
                    denoised, self.nmask, self.init_latent, self.mask, blended_latent, denoiser=self, sigma=sigma
                )
                self.p.scripts.on_mask_blend(self.p, mba)
                blended_latent = mba.blended_latent
            denoised = blended_latent

        preview = self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(preview)

        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x

        self.step += 1

        if self.classic_ddim_eps_estimation:
            return (x - denoised) / sigma[:, None, None, None]  # as in Forge: not cast back

        return denoised.to(device=original_x_device, dtype=original_x_dtype)
