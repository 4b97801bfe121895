"""Fake of modules/sd_samplers_cfg_denoiser.py (1.10.1): CFGDenoiser with the real row layout,
callback order, skip-uncond logic, padding options, batched/chunked UNet calls and combining.

Omitted: the InstructPix2Pix edit-model branch (``combine_denoised_for_edit_model`` is kept as a
method only), the refiner switch and live-preview decoding (``sampler.last_latent`` is kept).
"""

from __future__ import annotations

from typing import Any

import modules.shared as shared
import torch
from modules import prompt_parser, scripts, sd_samplers_common
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
    cfg_denoiser_callback,
)
from modules.shared import state


def catenate_conds(conds):
    """mirrors modules/sd_samplers_cfg_denoiser.py: catenate_conds (1.10.1) - tensors or per-key dicts."""
    if isinstance(conds[0], dict):
        return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}
    return torch.cat(conds)


def subscript_cond(cond, a, b):
    """mirrors modules/sd_samplers_cfg_denoiser.py: subscript_cond (1.10.1)."""
    if isinstance(cond, dict):
        return {key: value[a:b] for key, value in cond.items()}
    return cond[a:b]


def pad_cond(tensor, repeats, empty):
    """mirrors modules/sd_samplers_cfg_denoiser.py: pad_cond (1.10.1) - appends ``repeats`` copies of
    the empty-prompt chunk to every row; for dicts only ``['crossattn']`` (changed in place)."""
    if isinstance(tensor, dict):
        tensor["crossattn"] = pad_cond(tensor["crossattn"], repeats, empty)
        return tensor
    return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], dim=1)


class CFGDenoiser(torch.nn.Module):
    """mirrors modules/sd_samplers_cfg_denoiser.py: CFGDenoiser (1.10.1)."""

    def __init__(self, sampler: Any) -> None:
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None  # steps requested for this pass
        self.total_steps = None  # expected denoiser calls (config.total_steps(steps))
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0  # [sic], as in the real code
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        """mirrors CFGDenoiser.combine_denoised (1.10.1): uncond = the last ``uncond.shape[0]`` rows;
        each image adds ``(x_out[row] - uncond_i) * weight * cond_scale`` per AND part."""
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def combine_denoised_for_edit_model(self, x_out, cond_scale):
        """mirrors CFGDenoiser.combine_denoised_for_edit_model (1.10.1); never called by the fake."""
        out_cond, out_img_cond, out_uncond = x_out.chunk(3)
        return out_uncond + cond_scale * (out_cond - out_img_cond) + self.image_cfg_scale * (out_img_cond - out_uncond)

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def update_inner_model(self):
        """mirrors CFGDenoiser.update_inner_model (1.10.1)."""
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def pad_cond_uncond(self, cond, uncond):
        """mirrors CFGDenoiser.pad_cond_uncond (1.10.1): the shorter side gets empty-prompt chunks."""
        empty = shared.sd_model.cond_stage_model_empty_prompt
        num_repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if num_repeats < 0:
            cond = pad_cond(cond, -num_repeats, empty)
            self.padded_cond_uncond = True
        elif num_repeats > 0:
            uncond = pad_cond(uncond, num_repeats, empty)
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond, uncond):
        """mirrors CFGDenoiser.pad_cond_uncond_v0 (1.10.1): uncond repeats its last vector or is truncated."""
        is_dict = isinstance(uncond, dict)
        vec = uncond["crossattn"] if is_dict else uncond
        if vec.shape[1] < cond.shape[1]:
            vec = torch.hstack([vec, vec[:, -1:].repeat([1, cond.shape[1] - vec.shape[1], 1])])
            self.padded_cond_uncond_v0 = True
        elif vec.shape[1] > cond.shape[1]:
            vec = vec[:, : cond.shape[1]]
            self.padded_cond_uncond_v0 = True
        if is_dict:
            uncond["crossattn"] = vec
        else:
            uncond = vec
        return cond, uncond

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        """mirrors CFGDenoiser.forward (1.10.1), without the edit-model branch and the refiner."""
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        def apply_blend(current_latent):
            blended_latent = current_latent * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                mba = scripts.MaskBlendArgs(
                    current_latent, self.nmask, self.init_latent, self.mask, blended_latent, denoiser=self, sigma=sigma
                )
                self.p.scripts.on_mask_blend(self.p, mba)
                blended_latent = mba.blended_latent
            return blended_latent

        if self.mask_before_denoising and self.mask is not None:
            x = apply_blend(x)

        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]

        if shared.sd_model.model.conditioning_key == "crossattn-adm":
            image_uncond = torch.zeros_like(image_cond)

            def make_condition_dict(c_crossattn, c_adm):
                return {"c_crossattn": [c_crossattn], "c_adm": c_adm}

        else:
            image_uncond = image_cond
            dict_cond = isinstance(uncond, dict)  # decided before the callback, as in the real code

            def make_condition_dict(c_crossattn, c_concat):
                if dict_cond:
                    return {**c_crossattn, "c_concat": [c_concat]}
                return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        # cond rows: image i repeated once per AND part, in image order; then one uncond row per image
        per_part = [i for i, n in enumerate(repeats) for _ in range(n)]
        x_in = torch.cat([torch.stack([x[i] for i in per_part]), x])
        sigma_in = torch.cat([torch.stack([sigma[i] for i in per_part]), sigma])
        image_cond_in = torch.cat([torch.stack([image_cond[i] for i in per_part]), image_uncond])

        params = CFGDenoiserParams(
            x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self
        )
        cfg_denoiser_callback(params)
        x_in = params.x
        image_cond_in = params.image_cond
        sigma_in = params.sigma
        tensor = params.text_cond
        uncond = params.text_uncond

        skip_uncond = False
        if shared.opts.skip_early_cond != 0.0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
        elif (self.step % 2 or shared.opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if shared.opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = shared.opts.s_min_uncond_all

        if skip_uncond:  # drops the trailing uncond rows; image_cond_in is left as it is
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        if shared.opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif shared.opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            if shared.opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(
                        x_in[a:b],
                        sigma_in[a:b],
                        cond=make_condition_dict(subscript_cond(cond_in, a, b), image_cond_in[a:b]),
                    )
        else:
            x_out = torch.zeros_like(x_in)
            chunk = batch_size * 2 if shared.opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], chunk):
                b = min(a + chunk, tensor.shape[0])
                x_out[a:b] = self.inner_model(
                    x_in[a:b], sigma_in[a:b], cond=make_condition_dict(subscript_cond(tensor, a, b), image_cond_in[a:b])
                )
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self.inner_model(
                    x_in[-n:], sigma_in[-n:], cond=make_condition_dict(uncond, image_cond_in[-n:])
                )

        denoised_image_indexes = [parts[0][0] for parts in conds_list]
        if skip_uncond:  # the first part's cond output stands in for the skipped uncond rows
            fake_uncond = torch.cat([x_out[i : i + 1] for i in denoised_image_indexes])
            x_out = torch.cat([x_out, fake_uncond])

        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0] :])

        if skip_uncond:
            denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale * self.cond_scale_miltiplier)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = apply_blend(denoised)

        self.sampler.last_latent = self.get_pred_x0(
            torch.cat([x_in[i : i + 1] for i in denoised_image_indexes]),
            torch.cat([x_out[i : i + 1] for i in denoised_image_indexes]),
            sigma,
        )

        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x

        self.step += 1
        return denoised
