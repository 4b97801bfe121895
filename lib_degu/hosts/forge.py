"""Forge adapter: DeGu through Forge's own batcher (backend/sampling/sampling_function.py).

Forge never calls ``combine_denoised`` and never fires ``on_cfg_denoised``, so nothing of the
A1111 adapter applies. Per pass, on a clone of the pass's UnetPatcher (Forge drops it afterwards):
- a conditioning modifier appends a zero-strength generic entry (a copy of the prompt's entry with
  its text conditioning replaced, so ControlNet, inpaint ``c_concat`` and Flux ``guidance`` stay)
  and tags every entry's rows with their stream (a CPU tensor: reading it never syncs the GPU);
- a model-function wrapper, chained around any previous one, keeps the generic rows' output and,
  for the attention mask, hooks ``attn2.to_q/to_k`` (UNets), Flux's ``attention`` or SD3.5's MM-DiT
  ``attention`` only for the duration of that one call;
- the first post-CFG function returns ``denoised + (DeGu - plain CFG)``, so later post-CFG functions
  (PAG, SAG; Forge Neo's Epsilon Scaling and MaHiRo) apply to DeGu's result;
- where a cfg function replaces the CFG formula (dynamic thresholding; Forge Neo's RescaleCFG, set after
  DeGu's hooks), the conditioning modifier wraps it for the call: it gets an uncond prediction moved so
  that plain CFG is DeGu's combination (the prompt's cond prediction unchanged), and applies to that.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from backend.sampling import sampling_function as forge_sampling
from backend.sampling.condition import Condition, ConditionCrossAttn, repeat_to_batch_size
from modules import prompt_parser, sd_samplers, shared

from lib_degu.attention import (
    AttentionCapture,
    JointAttentionCapture,
    MMDiTCapture,
    find_cross_attention,
    find_joint_dit,
    find_mmdit,
    joint_blocks,
    token_indicator,
)
from lib_degu.hosts.common import (
    Generation,
    GenericRows,
    and_parts,
    generic_conds,
    hires_layout,
    launch_pass,
    plan_prompts,
    sd3_subject_keys,
    subject_positions,
)
from lib_degu.plan import ImagePlan, check_settings
from lib_degu.settings import DeGuSettings
from lib_degu.step import Guide, is_active

ROLE_KEY = "degu_role"
UNCOND, IDENTITY, CONTEXT = 0.0, 1.0, 2.0
PATCHER_ATTR = "degu_pass"
# Below this |1 - CFG scale| DeGu's difference is not moved into a cfg function's uncond (it would be
# divided by 1 - s); it is added after the cfg function instead, as without one.
CFG_SHIFT_MIN = 0.05


class RoleTag(Condition):
    """Marks which stream each row belongs to. Kept on the CPU (never moved to the device)."""

    def process_cond(self, batch_size: int, device: Any, **kwargs: Any) -> RoleTag:
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size))


@dataclass
class StepState:
    cond_scale: float
    uncond_runs: bool
    generic_entry: dict | None  # None on calls that reuse the context (the generic prompt does not run)
    sigma: torch.Tensor  # per image of the batch (Forge's samplers all pass k-diffusion sigmas)
    with_context: bool = True  # the generic prompt runs at this call (else DeGu reuses its difference)
    generic: torch.Tensor | None = None
    applied: bool = False  # DeGu's difference went in through the cfg function (post_cfg adds nothing)


@dataclass
class Pass:
    p: Any
    generation: Generation
    plans: list[ImagePlan]
    active_images: list[int]
    generic: GenericRows
    positions: list[list[int]]
    guide: Guide
    base_unet: Any
    capture: AttentionCapture | None = None
    step: StepState | None = None
    indicator: torch.Tensor | None = None
    fallback_announced: bool = False
    model: Any = None  # the sd_model this pass was prepared on (the refiner switch replaces it)
    off: bool = False

    def __deepcopy__(self, memo: dict) -> Pass:
        return self  # UnetPatcher.clone deep-copies model_options; the pass state stays shared


def start_generation(p: Any, settings: DeGuSettings) -> Generation | None:
    generation = Generation(settings)
    problem = check_settings(settings)
    if problem is not None:
        generation.note(p, problem)
        return None
    return generation


def _subject_keys(model: Any, text: str, generic: str, subject: str) -> list[int]:
    """The subject's key positions in the model's text conditioning ([] if they cannot be found)."""
    if hasattr(model, "text_processing_engine_g") and hasattr(model, "text_processing_engine_t5"):
        # SD3.5: CLIP-L/G chunks of 77, then the T5 tokens (zeros unless ``sd3_enable_t5``, off by default)
        clip = getattr(model.text_processing_engine_l, "tokenize_line", None)
        t5_on = getattr(shared.opts, "sd3_enable_t5", False)
        t5 = _line_tokenizer(model.text_processing_engine_t5) if t5_on else None
        if clip is None:
            return []
        return sd3_subject_keys(clip, t5, text, generic, subject, t5_cut_to_clip=False)
    keys = _text_keys(model)
    return subject_positions(keys[0], text, generic, subject, keys[1]) if keys else []


def _text_keys(model: Any) -> tuple[Any, int | None] | None:
    """The tokenizer whose tokens are the model's text keys, and its chunk length.

    SD1/SD2/SDXL: CLIP chunks of 77 (SDXL's L and G align). Flux, Chroma: T5 only (no BOS, one padded
    chunk). Forge Neo's Qwen-Image, Z-Image, Lumina 2: chat-template tokens (``_template_tokenizer``).
    SD3.5 (CLIP-L/G then T5, joined): ``_subject_keys``.
    """
    for name in ("text_processing_engine_qwen", "text_processing_engine_gemma"):  # Forge Neo
        if hasattr(model, name):
            tokenize = _template_tokenizer(getattr(model, name), crop_template=name.endswith("qwen"))
            return (tokenize, None) if tokenize is not None else None
    if hasattr(model, "text_processing_engine_t5"):
        if hasattr(model, "text_processing_engine_g"):
            return None
        tokenize = _line_tokenizer(model.text_processing_engine_t5)
        return (tokenize, None) if tokenize is not None else None
    for name in ("text_processing_engine", "text_processing_engine_l"):
        engine = getattr(model, name, None)
        if engine is not None and hasattr(engine, "tokenize_line"):
            return engine.tokenize_line, 77
    return None


def _text_length(entry: dict) -> int:
    """The text length of a cond entry's cross-attention conditioning (0 if it has none)."""
    crossattn = entry.get("model_conds", {}).get("c_crossattn")
    tensor = getattr(crossattn, "cond", None)
    return int(tensor.shape[1]) if torch.is_tensor(tensor) and tensor.dim() == 3 else 0


# Forge Neo's Qwen-Image engines keep the conditioning from the user turn on: they drop the tokens up to
# the second ``<|im_start|>`` and the ``user``, ``\n`` after it (backend/text_processing/qwen_engine.py,
# ``postprocess_tokens`` @ 97dd8713 and ``__call__`` @ 329d9d97: the same rule, these token ids).
QWEN_IM_START, QWEN_USER, QWEN_NEWLINE = 151644, 872, 198


def _qwen_template_end(tokens: list[int]) -> int:
    end = starts = 0
    for index, token in enumerate(tokens):
        if token == QWEN_IM_START and starts < 2:
            end, starts = index, starts + 1
    if len(tokens) > end + 3 and tokens[end + 1] == QWEN_USER and tokens[end + 2] == QWEN_NEWLINE:
        end += 3
    return end


def _template_tokenizer(engine: Any, crop_template: bool) -> Any:
    """``tokenize_line`` for Forge Neo's chat-template engines (Qwen-Image: Qwen2.5-VL; Z-Image: Qwen3;
    Lumina 2: Gemma 2): the tokens the text encoder sees, template included, as the engine builds them,
    less what the engine crops. The template is shared by both prompts, so the subject's positions
    (the tokens the generic prompt lacks) come out right whatever its length."""
    tokenizer = getattr(engine, "tokenizer", None)
    own_lines = callable(getattr(engine, "tokenize_line", None))  # Neo's own Qwen engine: template inside
    if not own_lines and not callable(getattr(tokenizer, "tokenize_with_weights", None)):
        return None

    def tokenize_line(text: str) -> tuple[list[Any], int]:
        if own_lines:
            chunks, _ = engine.tokenize_line(text)
            tokens = [token for chunk in chunks for token in chunk.tokens]
        else:
            if hasattr(engine, "llama_template"):
                text = engine.llama_template.format(text)
            elif callable(getattr(engine, "process_template", None)):
                text = engine.process_template(text, False)
            batches = tokenizer.tokenize_with_weights(text, disable_weights=True)
            tokens = [pair[0] for batch in batches for pair in batch]
        tokens = [int(t) if isinstance(t, int) else -1 for t in tokens]  # image embeds: never the subject
        if crop_template:
            tokens = tokens[_qwen_template_end(tokens) :]
        return [SimpleNamespace(tokens=tokens, fixes=[])], len(tokens)

    return tokenize_line


def _line_tokenizer(engine: Any) -> Any:
    """``tokenize_line`` of a T5-layout engine: Forge's own, or (Forge Neo, whose ComfyUI-style
    engines have none) the same (chunks, count) built from ``tokenizer.tokenize_with_weights``."""
    if hasattr(engine, "tokenize_line"):
        return engine.tokenize_line
    tokenizer = getattr(engine, "tokenizer", None)
    if not callable(getattr(tokenizer, "tokenize_with_weights", None)):
        return None

    def tokenize_line(text: str) -> tuple[list[Any], int]:
        batches = tokenizer.tokenize_with_weights(text, disable_weights=True)
        tokens = [int(pair[0]) for batch in batches for pair in batch]
        return [SimpleNamespace(tokens=tokens, fixes=[])], len(tokens)

    return tokenize_line


def _distilled_cfg(p: Any) -> Any:
    return getattr(p, "hr_distilled_cfg" if getattr(p, "is_hr_pass", False) else "distilled_cfg_scale", None)


def prepare_pass(p: Any, generation: Generation) -> Pass | None:
    """Idempotent: Forge calls process_before_every_sampling twice before a hires pass."""
    unet = p.sd_model.forge_objects.unet
    previous: Pass | None = getattr(unet, PATCHER_ATTR, None)
    base_unet = previous.base_unet if previous is not None else unet
    p.sd_model.forge_objects.unet = base_unet

    plans = plan_prompts(p, generation, lambda prompt: and_parts(prompt_parser, prompt))
    if any(len(plan.parts) > 1 for plan in plans):
        generation.note(p, "DeGu: AND prompts are merged by Forge before guidance; DeGu is off for them.")
        return None
    active = [i for i, plan in enumerate(plans) if plan.active]
    if not active:
        return None
    # Every image needs a row in the generic entry; images without the subject repeat their prompt
    # (their difference is never applied).
    texts = [plan.parts[0].generic if plan.active else plan.parts[0].text for plan in plans]
    positions = [
        _subject_keys(shared.sd_model, plans[i].parts[0].text, texts[i], generation.settings.subject) for i in active
    ]
    state = Pass(
        p=p,
        generation=generation,
        plans=plans,
        active_images=active,
        generic=GenericRows(
            generic_conds(p, generation, texts, prompt_parser, sd_samplers, distilled_cfg_scale=_distilled_cfg(p)),
            prompt_parser,
        ),
        positions=positions,
        guide=Guide(generation.settings, layout=hires_layout(p, generation)),
        base_unet=base_unet,
        model=p.sd_model,
    )
    if generation.settings.mask_source == "attention" and state.guide.layout is None:  # a reused layout reads none
        state.capture = _make_capture(p, generation, base_unet, positions)

    generation.remember(p, active, state.guide)
    clone = base_unet.clone()
    _install(clone, state)
    setattr(clone, PATCHER_ATTR, state)
    p.sd_model.forge_objects.unet = clone
    denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
    if denoiser is not None:  # Forge creates the pass's sampler before process_before_every_sampling
        setattr(denoiser, PATCHER_ATTR, state)
        if generation.settings.layout_pass:
            _patch_launch(p.sampler, state)
    return state


def _patch_launch(sampler: Any, state: Pass) -> None:
    """For the layout pass: wrap this pass's ``launch_sampling`` once (``prepare_pass`` may run twice),
    undone when it returns or raises."""
    _unpatch_launch(sampler)
    replaced = vars(sampler).get("launch_sampling")
    original = sampler.launch_sampling

    def launch_sampling(steps: int, func: Any) -> Any:
        try:
            return launch_pass(state, sampler, original, steps, func, host_state=shared.state,
                               nv_rng=getattr(sys.modules.get("modules.rng"), "nv_rng", None),
                               total_progress=getattr(shared, "total_tqdm", None))
        finally:
            _unpatch_launch(sampler)

    launch_sampling.degu_replaced = (replaced,)  # type: ignore[attr-defined]
    sampler.launch_sampling = launch_sampling


def _unpatch_launch(sampler: Any) -> None:
    ours = vars(sampler).get("launch_sampling")
    if not hasattr(ours, "degu_replaced"):
        return  # not patched, or another extension wrapped it after us: the pass's sampler is dropped anyway
    (replaced,) = ours.degu_replaced
    if replaced is None:
        del sampler.launch_sampling
    else:
        sampler.launch_sampling = replaced


def _make_capture(p: Any, generation: Generation, unet: Any, positions: list[list[int]]) -> AttentionCapture | None:
    diffusion_model = getattr(unet.model, "diffusion_model", None)
    flux = _flux_module(diffusion_model)
    cross_attention = diffusion_model is not None and bool(find_cross_attention(diffusion_model))
    mmdit = not cross_attention and flux is None and find_mmdit(diffusion_model) is not None  # SD3.5
    # Forge Neo's Qwen-Image, Lumina 2 and Z-Image: text-first joint attention with their own kernel name
    joint = None if cross_attention or flux is not None or mmdit else find_joint_dit(diffusion_model)
    if not cross_attention and flux is None and not mmdit and joint is None:
        reason = f"this model's attention cannot be read ({_model_name(diffusion_model)})"
    elif not all(positions):
        reason = "the subject's tokens could not be located"
    elif cross_attention:
        return AttentionCapture(diffusion_model)
    elif mmdit:
        return MMDiTCapture(diffusion_model)
    elif joint is not None:
        namespace, layout = joint
        patch_size = int(getattr(diffusion_model, "patch_size", 2))
        return JointAttentionCapture(namespace, root=diffusion_model, layout=layout, patch_size=patch_size)
    else:  # Flux, Chroma: the middle quarter of the double-then-single block sequence
        return JointAttentionCapture(flux, root=diffusion_model)
    generation.note(p, f"DeGu: attention mask unavailable ({reason}); using the difference mask.")
    return None


def _model_name(diffusion_model: Any) -> str:
    return type(diffusion_model).__name__


def _flux_module(diffusion_model: Any) -> Any:
    """Forge's backend/nn/flux.py when the model's joint blocks are its blocks (Flux, and Chroma built
    from them): they call its module-level ``attention`` with text tokens first. Image-first blocks
    (``flipped_img_txt``) are left to the difference mask. Only the double/single blocks count: Neo's
    Qwen-Image and NextDiT borrow flux.py's rope embedder but never call its ``attention``."""
    import sys

    if diffusion_model is None:
        return None
    if any(getattr(module, "flipped_img_txt", False) for module in diffusion_model.modules()):
        return None
    for block in joint_blocks(diffusion_model):
        owner = sys.modules.get(type(block).__module__)
        if owner is not None and owner.__name__ == "backend.nn.flux":
            return owner if callable(getattr(owner, "attention", None)) else None
    return None


# -- the hooks ---------------------------------------------------------------------------------------
def _install(unet: Any, state: Pass) -> None:
    options = unet.model_options
    previous_wrapper = options.get("model_function_wrapper")

    def conditioning_modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):  # noqa: ANN001, ANN202
        state.step = None
        if state.off:
            return model, x, timestep, uncond, cond, cond_scale, model_options, seed
        try:
            denoiser = state.p.sampler.model_wrap_cfg
            if not is_active(state.generation.settings, denoiser.step / max(denoiser.total_steps or 1, 1)):
                return model, x, timestep, uncond, cond, cond_scale, model_options, seed
            if len(cond) != 1:
                return model, x, timestep, uncond, cond, cond_scale, model_options, seed
            batch = x.shape[0]
            cfg1 = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
            uncond_runs = uncond is not None and not cfg1
            key = (tuple(x.shape), state.generic.entries_at(denoiser.step))
            with_context = state.guide.needs_context(key, has_uncond=uncond_runs)
            generic_entry = _generic_entry(cond[0], state.generic.at(denoiser.step)) if with_context else None
            state.step = StepState(cond_scale, uncond_runs, generic_entry, timestep, with_context)
            if "sampler_cfg_function" in model_options and uncond_runs and abs(1.0 - cond_scale) >= CFG_SHIFT_MIN:
                # A cfg function (Neo's RescaleCFG, DynThres, LatentModifier) replaces the CFG formula: it
                # must see DeGu's combination, not get DeGu's difference added after it.
                wrapped = through_degu(model_options["sampler_cfg_function"])
                model_options = {**model_options, "sampler_cfg_function": wrapped}
            coupled_by = _batch_coupling(model_options)
            if coupled_by:
                # Extra rows would change what the other extension computes for the host's rows: leave
                # the batch alone; post_cfg runs the generic prompt on its own (no attention to read).
                state.generation.note(
                    state.p,
                    f"DeGu: {coupled_by} couples the images of a batch; the generic prompt runs as a separate "
                    "model call (slower) and the difference mask is used.",
                )
                state.fallback_announced = True  # said once, with the reason
                return model, x, timestep, uncond, cond, cond_scale, model_options, seed
            cond = [_tagged(cond[0], IDENTITY, batch)]
            if with_context:
                cond.append(_tagged(generic_entry, CONTEXT, batch))
            if uncond is not None:
                uncond = [_tagged(entry, UNCOND, batch) for entry in uncond]
            if state.capture is not None:
                if state.indicator is None or state.indicator.device != x.device:
                    # As wide as the prompt's conditioning, so that batching that tiles it tiles this too
                    length = max(_text_length(cond[0]), max(max(found) for found in state.positions) + 1)
                    state.indicator = token_indicator(state.positions, length, x.device)  # once per pass
                state.capture.begin_step(state.active_images, state.indicator)
        except Exception as error:
            state.step = None
            state.generation.note(state.p, f"DeGu: skipped a step after an error: {error!r}")
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    def model_function_wrapper(apply_model, args):  # noqa: ANN001, ANN202
        c = dict(args["c"])
        roles = c.pop(ROLE_KEY, None)
        args = {**args, "c": c}
        step = state.step
        if roles is None or step is None:
            return _call(previous_wrapper, apply_model, args)
        role_list = roles[:, 0].tolist()  # a CPU tensor: no device sync
        # The identity entry's rows are the images in order; only active images are captured.
        identity_rows = [row for row, role in enumerate(role_list) if role == IDENTITY]
        pairs = [(identity_rows[image], k) for k, image in enumerate(state.active_images) if identity_rows]
        if isinstance(state.capture, JointAttentionCapture):
            text_tokens = c["c_crossattn"].shape[1]
            latent_hw = (int(args["input"].shape[-2]), int(args["input"].shape[-1]))
            run_call = lambda: _call(previous_wrapper, apply_model, args)  # noqa: E731
            output = _joint_call(state, pairs, text_tokens, latent_hw, run_call)
        elif state.capture is not None and pairs:
            state.capture.arm_call(pairs)
            with state.capture:  # hooks exist for this one call only, removed even if it raises
                output = _call(previous_wrapper, apply_model, args)
        else:
            output = _call(previous_wrapper, apply_model, args)
        context = [row for row, role in enumerate(role_list) if role == CONTEXT]
        if context:
            step.generic = output[context]
            # The generic entry has strength 0, but Forge's batcher adds it as ``output * 0`` and
            # NaN * 0 is NaN: zeroed rows keep a non-finite generic prediction out of the host's result.
            output = output.index_fill(0, torch.tensor(context, device=output.device), 0.0)
        return output

    def difference(step: StepState, args: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """DeGu's result minus plain CFG for the active images: (their batch index, the difference)."""
        generic = step.generic
        if generic is None and step.with_context:  # the generic rows did not run in the batch: one extra call
            generic = _extra_generic_call(state, step, args)
        cond = args["cond_denoised"]
        index = torch.tensor(state.active_images, device=cond.device)
        s = cond.index_select(0, index)
        g = None if generic is None else generic.index_select(0, index.to(generic.device)).to(s)
        u = args["uncond_denoised"].index_select(0, index) if step.uncond_runs else None
        attention = state.capture.take() if state.capture is not None else None
        sigma = step.sigma.index_select(0, index.to(step.sigma.device))
        delta = state.guide.delta(u, s, g, cfg_scale=step.cond_scale, attention=attention, sigma=sigma)
        state.generation.sources |= state.guide.sources_used
        return index, delta

    def through_degu(cfg_function):  # noqa: ANN001, ANN202
        def sampler_cfg_function(args):  # noqa: ANN001, ANN202
            """The cfg function gets the prompt's own cond prediction and an uncond prediction moved so
            that plain CFG at the pass's scale is DeGu's combination: u' + s (c - u') = u + s (c - u) + d
            for u' = u + d / (1 - s). A formula of the guided prediction and the cond (RescaleCFG) thus
            applies to DeGu's result; post_cfg then adds nothing."""
            step = state.step
            if step is None or step.applied:
                return cfg_function(args)
            try:
                index, delta = difference(step, args)
            except Exception as error:
                state.step = None
                state.generation.note(state.p, f"DeGu: skipped a step after an error: {error!r}")
                return cfg_function(args)
            step.applied = True
            uncond = args["uncond_denoised"]
            uncond = uncond.index_add(0, index, (delta / (1.0 - step.cond_scale)).to(uncond.dtype))
            return cfg_function({**args, "uncond": args["input"] - uncond, "uncond_denoised": uncond})

        return sampler_cfg_function

    def post_cfg(args):  # noqa: ANN001, ANN202
        step, state.step = state.step, None
        denoised = args["denoised"]
        if step is None or step.applied:
            return denoised
        try:
            index, delta = difference(step, args)
            return denoised.index_add(0, index, delta.to(denoised.dtype))
        except Exception as error:
            state.generation.note(state.p, f"DeGu: skipped a step after an error: {error!r}")
            return denoised

    unet.add_conditioning_modifier(conditioning_modifier)
    options["model_function_wrapper"] = model_function_wrapper
    # First post-CFG function, before PAG/SAG/others (set_model_sampler_post_cfg_function appends).
    options["sampler_post_cfg_function"] = [post_cfg] + list(options.get("sampler_post_cfg_function", []))
    estimate = options.get("memory_peak_estimation_modifier", unet.memory_required)
    # Forge reserves memory for [2B, ...]; DeGu runs 3B rows in the same batch.
    options["memory_peak_estimation_modifier"] = lambda shape: estimate([shape[0] * 3 // 2, *shape[1:]])


def _joint_call(state: Pass, pairs: list, text_tokens: int, latent_hw: tuple[int, int], run_call: Any) -> Any:
    """One model call with the joint-attention map read. A layout the capture cannot fold (Forge
    Neo's Flux Kontext appends reference-image tokens after the image's) fails inside the call: the
    call is made again without the capture and the pass goes on with the difference mask."""
    try:
        return state.capture.call(pairs, text_tokens, latent_hw, run_call)
    except Exception as error:
        state.capture = None
        state.generation.note(
            state.p,
            f"DeGu: attention mask unavailable (this model call's attention could not be read: {error!r}); "
            "using the difference mask.",
        )
        return run_call()


def _call(previous_wrapper: Any, apply_model: Any, args: dict) -> torch.Tensor:
    if previous_wrapper is not None:
        return previous_wrapper(apply_model, args)
    return apply_model(args["input"], args["timestep"], **args["c"])


def _generic_entry(entry: dict, generic: Any) -> dict:
    """A copy of the prompt's entry with the generic text conditioning and zero strength."""
    conds = dict(entry["model_conds"])
    copy = dict(entry)
    if isinstance(generic, dict):
        conds["c_crossattn"] = ConditionCrossAttn(generic["crossattn"])
        if "y" in conds and "vector" in generic:
            conds["y"] = Condition(generic["vector"])
        copy["cross_attn"] = generic["crossattn"]
        if "pooled_output" in copy:
            copy["pooled_output"] = generic["vector"]
        # Forge Neo turns every other tensor of a dict cond into a model cond (token ids, masks):
        # the generic rows take the generic prompt's.
        for key, value in generic.items():
            if key not in ("crossattn", "vector", "guidance") and key in conds and torch.is_tensor(value):
                conds[key] = Condition(value)
    else:
        conds["c_crossattn"] = ConditionCrossAttn(generic)
        copy["cross_attn"] = generic
    conds.pop(ROLE_KEY, None)
    copy["model_conds"] = conds
    copy["strength"] = 0.0  # mult = 0: the host's cond prediction and edit strength are unchanged
    return copy


def _tagged(entry: dict, role: float, batch: int) -> dict:
    tagged = dict(entry)
    tagged["model_conds"] = {**entry["model_conds"], ROLE_KEY: RoleTag(torch.full((batch, 1), role))}
    return tagged


def _batch_coupling(model_options: dict) -> str | None:
    """What makes rows of one model call depend on each other, so that adding rows is unsafe:
    attn1 replacements that attend across the batch (StyleAlign, reference-only) or block modifiers
    that index rows by cond/uncond against recorded statistics (reference-only's AdaIN)."""
    transformer_options = model_options.get("transformer_options", {})
    if transformer_options.get("patches_replace", {}).get("attn1"):
        return "another extension's attention replacement (StyleAlign or reference-only)"
    if transformer_options.get("block_modifiers"):
        return "another extension's block modifier (e.g. reference-only)"
    return None


def _extra_generic_call(state: Pass, step: StepState, args: dict) -> torch.Tensor:
    if not state.fallback_announced:
        state.fallback_announced = True
        print("[DeGu] the generic prompt ran as a separate model call (slower): it could not join the batch.")
    entry = dict(step.generic_entry)
    entry["strength"] = 1.0
    generic, _ = forge_sampling.calc_cond_uncond_batch(
        args["model"], [entry], None, args["input"], args["sigma"], args["model_options"]
    )
    return generic


# -- the refiner switch ---------------------------------------------------------------------------------
def on_cfg_denoiser(params: Any) -> None:
    """Forge's ``apply_refiner`` loads the refiner in the middle of a pass: a new ``shared.sd_model`` whose
    UnetPatcher has none of DeGu's hooks (the patched clone goes with the old model) and whose conds
    are recomputed. DeGu steps aside for the rest of the pass and says so; the host runs the refiner's
    steps unchanged. (script_callbacks.on_cfg_denoiser fires after the switch, every model call.)"""
    state: Pass | None = getattr(params.denoiser, PATCHER_ATTR, None)
    if state is None or state.off or state.p.sd_model is state.model:  # p.sd_model: shared.sd_model
        return
    state.off = True
    state.step = None
    state.generation.note(state.p, "DeGu: the model changed during sampling (refiner); DeGu is off after the switch.")


def register_callbacks() -> None:
    """Register the global callback once (the script module is re-executed on 'Reload UI')."""
    from modules import script_callbacks

    script_callbacks.remove_callbacks_for_function(on_cfg_denoiser)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="degu")


def undo_pass(p: Any) -> None:
    """Put back the pass's own UnetPatcher if a failed ``prepare_pass`` left our clone."""
    state: Pass | None = getattr(p.sd_model.forge_objects.unet, PATCHER_ATTR, None)
    if state is not None:
        p.sd_model.forge_objects.unet = state.base_unet
    if getattr(p, "sampler", None) is not None:
        _unpatch_launch(p.sampler)
