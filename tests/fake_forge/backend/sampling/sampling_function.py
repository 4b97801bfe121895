"""Forge's CFG sampling function and its batcher.

Own re-implementation; each function mirrors the one of the same name in
backend/sampling/sampling_function.py (Forge dfdcbab6). Test knobs (not in Forge):
``FREE_MEMORY`` (bytes the batcher believes are free; lower it to force splitting), and what
``sampling_prepare`` was asked: ``LAST_MEMORY_REQUEST`` (shape) / ``LAST_MEMORY_ESTIMATE`` (bytes).
"""

from __future__ import annotations

import collections
import math
from typing import Any

import torch
from backend import memory_management
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

FREE_MEMORY: float = float("inf")
LAST_MEMORY_REQUEST: list[int] | None = None
LAST_MEMORY_ESTIMATE: float | None = None

COND = 0
UNCOND = 1

cond_obj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches"])


def _feather(mult: torch.Tensor, area: tuple, full_h: int, full_w: int, rr: int = 8) -> None:
    """Fade the borders of a partial area in over ``rr`` pixels (no-op for the whole latent)."""
    h, w, top, left = area
    for t in range(rr):
        ramp = (t + 1) / rr
        if top != 0:
            mult[:, :, t : t + 1, :] *= ramp
        if top + h < full_h:
            mult[:, :, h - 1 - t : h - t, :] *= ramp
        if left != 0:
            mult[:, :, :, t : t + 1] *= ramp
        if left + w < full_w:
            mult[:, :, :, w - 1 - t : w - t] *= ramp


# mirrors backend/sampling/sampling_function.py: get_area_and_mult (Forge dfdcbab6)
def get_area_and_mult(conds: dict, x_in: torch.Tensor, timestep_in: torch.Tensor) -> cond_obj | None:
    if "timestep_start" in conds and timestep_in[0] > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and timestep_in[0] < conds["timestep_end"]:
        return None
    area = conds.get("area", (x_in.shape[2], x_in.shape[3], 0, 0))
    strength = conds.get("strength", 1.0)
    h, w, top, left = area
    input_x = x_in[:, :, top : top + h, left : left + w]

    if "mask" in conds:
        mask = conds["mask"][:, top : top + h, left : left + w] * conds.get("mask_strength", 1.0)
        mask = mask.unsqueeze(1).repeat(input_x.shape[0] // mask.shape[0], input_x.shape[1], 1, 1)
    else:
        mask = torch.ones_like(input_x)
    mult = mask * strength
    if "mask" not in conds:
        _feather(mult, area, x_in.shape[2], x_in.shape[3])

    conditioning = {
        key: value.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
        for key, value in conds["model_conds"].items()
    }
    return cond_obj(input_x, mult, conditioning, area, conds.get("control", None), None)


# mirrors backend/sampling/sampling_function.py: cond_equal_size (Forge dfdcbab6)
def cond_equal_size(c1: dict, c2: dict) -> bool:
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[k].can_concat(c2[k]) for k in c1)


# mirrors backend/sampling/sampling_function.py: can_concat_cond (Forge dfdcbab6)
def can_concat_cond(c1: cond_obj, c2: cond_obj) -> bool:
    if c1.input_x.shape != c2.input_x.shape:
        return False

    def same_object(a: Any, b: Any) -> bool:
        return a is b  # both None, or the very same object

    if not same_object(c1.control, c2.control) or not same_object(c1.patches, c2.patches):
        return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


# mirrors backend/sampling/sampling_function.py: cond_cat (Forge dfdcbab6)
def cond_cat(c_list: list[dict]) -> dict:
    grouped: dict[str, list] = {}
    for conditioning in c_list:
        for key, value in conditioning.items():
            grouped.setdefault(key, []).append(value)
    return {key: values[0].concat(values[1:]) for key, values in grouped.items()}


# mirrors backend/sampling/sampling_function.py: compute_cond_mark (Forge dfdcbab6)
def compute_cond_mark(cond_or_uncond: list[int], sigmas: torch.Tensor) -> torch.Tensor:
    rows = int(sigmas.shape[0])
    marks = [kind for kind in cond_or_uncond for _ in range(rows)]
    return torch.Tensor(marks).to(sigmas)


# mirrors backend/sampling/sampling_function.py: compute_cond_indices (Forge dfdcbab6)
def compute_cond_indices(cond_or_uncond: list[int], sigmas: torch.Tensor) -> tuple[list[int], list[int]]:
    rows = int(sigmas.shape[0])
    cond_indices: list[int] = []
    uncond_indices: list[int] = []
    for chunk, kind in enumerate(cond_or_uncond):
        (cond_indices if kind == 0 else uncond_indices).extend(range(chunk * rows, (chunk + 1) * rows))
    return cond_indices, uncond_indices


# mirrors backend/sampling/sampling_function.py: calc_cond_uncond_batch (Forge dfdcbab6)
def calc_cond_uncond_batch(
    model: Any,
    cond: list[dict],
    uncond: list[dict] | None,
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37

    to_run = []
    for entry in cond:
        prepared = get_area_and_mult(entry, x_in, timestep)
        if prepared is not None:
            to_run.append((prepared, COND))
    if uncond is not None:
        for entry in uncond:
            prepared = get_area_and_mult(entry, x_in, timestep)
            if prepared is not None:
                to_run.append((prepared, UNCOND))

    while to_run:
        first = to_run[0][0]
        first_shape = first.input_x.shape
        batchable = [i for i, (prepared, _) in enumerate(to_run) if can_concat_cond(prepared, first)]
        batchable.reverse()  # highest index first: the usual call order is [uncond, condN, ..., cond0]
        chosen = batchable[:1]

        free_memory = FREE_MEMORY
        for divisor in range(1, len(batchable) + 1):
            subset = batchable[: len(batchable) // divisor]
            input_shape = [len(subset) * first_shape[0]] + list(first_shape)[1:]
            if model.memory_required(input_shape) < free_memory:
                chosen = subset
                break

        popped = [to_run.pop(i) for i in chosen]  # descending indices: earlier pops keep the rest valid
        input_x = torch.cat([prepared.input_x for prepared, _ in popped])
        mult = [prepared.mult for prepared, _ in popped]
        area = [prepared.area for prepared, _ in popped]
        c = cond_cat([prepared.conditioning for prepared, _ in popped])
        cond_or_uncond = [kind for _, kind in popped]
        control, patches = popped[-1][0].control, popped[-1][0].patches

        batch_chunks = len(cond_or_uncond)
        timestep_ = torch.cat([timestep] * batch_chunks)

        transformer_options = (
            model_options["transformer_options"].copy() if "transformer_options" in model_options else {}
        )
        if patches is not None and "patches" not in transformer_options:
            # (Forge merges into a copy it then drops when "patches" already exists; same effect here)
            transformer_options["patches"] = patches
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond=cond_or_uncond, sigmas=timestep)
        cond_indices, uncond_indices = compute_cond_indices(cond_or_uncond=cond_or_uncond, sigmas=timestep)
        transformer_options["cond_indices"], transformer_options["uncond_indices"] = cond_indices, uncond_indices
        c["transformer_options"] = transformer_options

        if control is not None:
            link = control
            while link is not None:
                link.transformer_options = transformer_options
                link = link.previous_controlnet
            c["control"] = control.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))
            c["control_model"] = control

        if "model_function_wrapper" in model_options:
            args = {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            output = model_options["model_function_wrapper"](model.apply_model, args).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)

        for o in range(batch_chunks):
            h, w, top, left = area[o]
            region = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
            if cond_or_uncond[o] == COND:
                out_cond[region] += output[o] * mult[o]
                out_count[region] += mult[o]
            else:
                out_uncond[region] += output[o] * mult[o]
                out_uncond_count[region] += mult[o]

    out_cond /= out_count
    out_uncond /= out_uncond_count
    return out_cond, out_uncond


# mirrors backend/sampling/sampling_function.py: sampling_function_inner (Forge dfdcbab6)
def sampling_function_inner(
    model: Any,
    x: torch.Tensor,
    timestep: torch.Tensor,
    uncond: list[dict] | None,
    cond: list[dict],
    cond_scale: float,
    model_options={},  # noqa: B006 (Forge's signature)
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


# mirrors backend/sampling/sampling_function.py: sampling_function (Forge dfdcbab6)
def sampling_function(self: Any, denoiser_params: Any, cond_scale: float, cond_composition: list) -> tuple:
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    extra_concat_condition = unet_patcher.extra_concat_condition
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]

    image_cond_in = extra_concat_condition if extra_concat_condition is not None else denoiser_params.image_cond
    if (
        isinstance(image_cond_in, torch.Tensor)
        and image_cond_in.shape[0] == x.shape[0]
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


# mirrors backend/sampling/sampling_function.py: sampling_prepare (Forge dfdcbab6)
def sampling_prepare(unet: Any, x: torch.Tensor) -> None:
    global LAST_MEMORY_REQUEST, LAST_MEMORY_ESTIMATE
    batch, channels, height, width = x.shape
    estimate = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
    LAST_MEMORY_REQUEST = [batch * 2, channels, height, width]
    LAST_MEMORY_ESTIMATE = estimate(list(LAST_MEMORY_REQUEST))

    extra_patchers = list(unet.extra_model_patchers_during_sampling)
    if unet.controlnet_linked_list is not None:
        extra_patchers += unet.controlnet_linked_list.get_models()
    memory_management.load_models_gpu(
        models=[unet] + extra_patchers,
        memory_required=LAST_MEMORY_ESTIMATE,
        hard_memory_preservation=unet.extra_preserved_memory_during_sampling,
    )

    real_model = unet.model
    for cnet in unet.list_controlnets():
        cnet.pre_run(real_model, lambda percent: real_model.predictor.percent_to_sigma(percent))


# mirrors backend/sampling/sampling_function.py: sampling_cleanup (Forge dfdcbab6)
def sampling_cleanup(unet: Any) -> None:
    for cnet in unet.list_controlnets():
        cnet.cleanup()
