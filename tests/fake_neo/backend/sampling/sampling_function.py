"""Forge Neo's CFG sampling function.

Own re-implementation; each function mirrors the one of the same name in
backend/sampling/sampling_function.py (Forge Neo 000feeed). The batcher (``calc_cond_uncond_batch`` and
its helpers) is unchanged from Forge and is the simulated Forge's; Neo differs in:
- ``sampling_function(..., extra_model_options=None)``: the patcher's ``model_options`` joined with the
  options ``CFGDenoiser.forward`` received (``utils.join_dicts``: the patcher's lists first);
- post-CFG functions also get ``"cond_scale"``;
- ``c_concat`` is attached only for inpainting models (``inner_model.is_inpaint``);
- ``sampling_prepare`` reserves memory for ``[2B, ...]`` with ``unet.memory_required``; the
  ``memory_peak_estimation_modifier`` option is not read.
Test knobs: ``LAST_MEMORY_REQUEST`` / ``LAST_MEMORY_ESTIMATE`` as in the simulated Forge; the batcher's
``FREE_MEMORY`` is ``_FORGE.FREE_MEMORY``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from backend import _forge, memory_management, utils
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

_FORGE = _forge.load("backend/sampling/sampling_function.py")
COND, UNCOND = _FORGE.COND, _FORGE.UNCOND
get_area_and_mult = _FORGE.get_area_and_mult
cond_equal_size = _FORGE.cond_equal_size
can_concat_cond = _FORGE.can_concat_cond
cond_cat = _FORGE.cond_cat
compute_cond_mark = _FORGE.compute_cond_mark
compute_cond_indices = _FORGE.compute_cond_indices
calc_cond_uncond_batch = _FORGE.calc_cond_uncond_batch
sampling_cleanup = _FORGE.sampling_cleanup

FREE_MEMORY: float = float("inf")  # kept for the shared harness; the batcher reads _FORGE.FREE_MEMORY
LAST_MEMORY_REQUEST: list[int] | None = None
LAST_MEMORY_ESTIMATE: float | None = None


# mirrors backend/sampling/sampling_function.py: sampling_function_inner (Forge Neo 000feeed)
def sampling_function_inner(
    model: Any,
    x: torch.Tensor,
    timestep: torch.Tensor,
    uncond: list[dict] | None,
    cond: list[dict],
    cond_scale: float,
    model_options={},  # noqa: B006 (Neo's signature)
    seed: int | None = None,
    return_full: bool = False,
) -> Any:
    edit_strength = sum(item.get("strength", 1) for item in cond)
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {
            "cond": x - cond_pred,
            "uncond": x - uncond_pred,
            "cond_scale": cond_scale,
            "timestep": timestep,
            "input": x,
            "sigma": timestep,
            "cond_denoised": cond_pred,
            "uncond_denoised": uncond_pred,
            "model": model,
            "model_options": model_options,
        }
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {
            "denoised": cfg_result,
            "cond": cond,
            "uncond": uncond,
            "cond_scale": cond_scale,  # Neo: post-CFG functions (MaHiRo) read the scale
            "model": model,
            "uncond_denoised": uncond_pred,
            "cond_denoised": cond_pred,
            "sigma": timestep,
            "model_options": model_options,
            "input": x,
        }
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


# mirrors backend/sampling/sampling_function.py: sampling_function (Forge Neo 000feeed)
def sampling_function(
    self: Any, denoiser_params: Any, cond_scale: float, cond_composition: list, extra_model_options: dict | None = None
) -> tuple:
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    extra_concat_condition = unet_patcher.extra_concat_condition
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = utils.join_dicts(unet_patcher.model_options, extra_model_options)
    seed = self.p.seeds[0]

    image_cond_in = extra_concat_condition if extra_concat_condition is not None else denoiser_params.image_cond
    if isinstance(image_cond_in, torch.Tensor) and self.inner_model.inner_model.is_inpaint:
        if (
            image_cond_in.shape[0] == x.shape[0]
            and image_cond_in.shape[2] == x.shape[2]
            and image_cond_in.shape[3] == x.shape[3]
        ):
            for entry in (uncond or []) + cond:
                entry["model_conds"]["c_concat"] = Condition(image_cond_in)

    if control is not None:
        for entry in cond + (uncond or []):
            entry["control"] = control

    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed
        )

    denoised, cond_pred, uncond_pred = sampling_function_inner(
        model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True
    )
    return denoised, cond_pred, uncond_pred


# mirrors backend/sampling/sampling_function.py: sampling_prepare (Forge Neo 000feeed), without online LoRA
def sampling_prepare(unet: Any, x: torch.Tensor) -> None:
    global LAST_MEMORY_REQUEST, LAST_MEMORY_ESTIMATE
    shape = list(x.shape)
    LAST_MEMORY_REQUEST = [2 * shape[0]] + shape[1:]
    LAST_MEMORY_ESTIMATE = unet.memory_required(LAST_MEMORY_REQUEST)  # the modifier option is not read
    extra_memory = unet.extra_preserved_memory_during_sampling
    extra_patchers = list(unet.extra_model_patchers_during_sampling)
    if unet.controlnet_linked_list is not None:
        extra_patchers += unet.controlnet_linked_list.get_models()
    memory_management.load_models_gpu(
        models=[unet] + extra_patchers, memory_required=LAST_MEMORY_ESTIMATE + extra_memory
    )
    real_model = unet.model
    for cnet in unet.list_controlnets():
        cnet.pre_run(real_model, lambda percent: real_model.predictor.percent_to_sigma(percent))
