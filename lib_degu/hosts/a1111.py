"""AUTOMATIC1111 1.10 adapter: DeGu inside ``CFGDenoiser.forward`` (modules/sd_samplers_cfg_denoiser.py).

Per pass (``process_before_every_sampling``) the adapter computes the generic prompt's conditioning
and the subject's token positions, and patches this pass's sampler object only:
- ``combine_denoised`` of the pass's CFGDenoiser is wrapped: the original runs first (so AND
  weights, other wrappers and inpaint blending stay the host's), DeGu adds its difference;
- ``launch_sampling`` is wrapped so attention hooks exist only while this pass samples and are
  removed in ``finally`` (errors, interrupts), together with every other patch.
The generic rows join the same model batch in the global ``on_cfg_denoiser`` callback, inserted
before the trailing uncond rows; the callback does nothing for denoisers that carry no DeGu pass.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch
from modules import prompt_parser, script_callbacks, sd_samplers, shared
from modules.sd_samplers_cfg_denoiser import catenate_conds
from modules.sd_samplers_timesteps import CFGDenoiserTimesteps

from lib_degu import guidance
from lib_degu.attention import AttentionCapture, MMDiTCapture, find_cross_attention, find_mmdit, token_indicator
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

PASS_ATTR = "_degu_pass"
CHUNK = 77


@dataclass
class StepPlan:
    step: int
    cond_rows: int
    sigma0: float | torch.Tensor
    with_context: bool  # the generic rows are in this call's batch (else DeGu reuses their difference)
    sigma: torch.Tensor | None  # per guided image, the noise level; None when the rows are noise predictions


@dataclass
class Pass:
    """Everything one sampling pass needs; lives on the pass's CFGDenoiser, removed after it."""

    p: Any
    generation: Generation
    plans: list[ImagePlan]
    active_images: list[int]
    cond_rows: list[list[int]]  # per image: the host's row of each AND part
    generic: GenericRows  # the generic rows' schedules
    generic_rows: dict[tuple[int, int], int]  # (image, part) -> index among the generic rows
    identity_rows: list[int]  # per active image: the cond row the attention is read from
    positions: list[list[int]]  # per active image: subject token positions in that row
    guide: Guide
    checkpoint: tuple[int, str]  # the model object and checkpoint file this pass was planned for
    capture: AttentionCapture | None = None
    step_plan: StepPlan | None = None
    off: bool = False
    indicator: torch.Tensor | None = None
    indicator_key: tuple[int, str] | None = None
    generic_source_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    identity_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # of identity_rows
    # Instance attributes our patches replaced (a foreign extension's patch), restored on unpatch.
    replaced: dict[str, Any] = field(default_factory=dict)


# -- generation and pass setup -------------------------------------------------------------------
def start_generation(p: Any, settings: DeGuSettings) -> Generation | None:
    generation = Generation(settings)
    problem = check_settings(settings)
    if problem is None and getattr(shared.sd_model, "cond_stage_key", None) == "edit":
        problem = "DeGu: InstructPix2Pix edit models are not supported; DeGu is off for this generation."
    if problem is not None:
        generation.note(p, problem)
        return None
    return generation


def _tokenize_line(model: Any) -> Any:
    text_model = getattr(model, "cond_stage_model", None)
    if hasattr(text_model, "model_lg"):  # SD3: the CLIP-L/G chunks come first in crossattn
        return text_model.model_lg.tokenize_line
    if hasattr(text_model, "tokenize_line"):  # SD1/SD2
        return text_model.tokenize_line
    for embedder in getattr(text_model, "embedders", []):  # SDXL: CLIP-L and G share the layout
        if hasattr(embedder, "tokenize_line"):
            return embedder.tokenize_line
    return None


def _sd3_t5_tokenizer(model: Any) -> Any:
    """SD3's T5 ``tokenize_line`` as (chunks, count), or None unless T5 runs (``SD3Cond``: zeros when
    the model was loaded without T5 or ``sd3_enable_t5`` is off, A1111's default)."""
    model_t5 = getattr(getattr(model, "cond_stage_model", None), "model_t5", None)
    if getattr(model_t5, "t5xxl", None) is None or not getattr(shared.opts, "sd3_enable_t5", False):
        return None

    def tokenize_line(line: str) -> tuple[list[Any], int]:
        tokens, _ = model_t5.tokenize_line(line)
        return [types.SimpleNamespace(tokens=tokens, fixes=[])], len(tokens)

    return tokenize_line


def _subject_keys(model: Any, text: str, generic: str, subject: str) -> list[int]:
    tokenize_line = _tokenize_line(model)
    if tokenize_line is None:
        return []
    if hasattr(getattr(model, "cond_stage_model", None), "model_t5"):  # SD3: CLIP chunks, then T5 tokens
        return sd3_subject_keys(tokenize_line, _sd3_t5_tokenizer(model), text, generic, subject, t5_cut_to_clip=True)
    return subject_positions(tokenize_line, text, generic, subject)


def prepare_pass(p: Any, generation: Generation) -> Pass | None:
    """Plan the pass, compute generic conds and positions, patch this pass's sampler."""
    settings = generation.settings
    plans = plan_prompts(p, generation, lambda prompt: and_parts(prompt_parser, prompt))
    cond_rows: list[list[int]] = []
    row = 0
    for plan in plans:
        cond_rows.append(list(range(row, row + len(plan.parts))))
        row += len(plan.parts)
    active = [i for i, plan in enumerate(plans) if plan.active]
    if not active:
        return None

    generic_texts: list[str] = []
    generic_rows: dict[tuple[int, int], int] = {}
    for image in active:
        for part_index, part in enumerate(plans[image].parts):
            if part.generic is not None:
                generic_rows[image, part_index] = len(generic_texts)
                generic_texts.append(part.generic)

    identity_rows, positions = [], []
    for image in active:
        first = plans[image].first_subject_part
        identity_rows.append(cond_rows[image][first])
        part = plans[image].parts[first]
        positions.append(_subject_keys(shared.sd_model, part.text, part.generic or "", settings.subject))

    state = Pass(
        p=p,
        generation=generation,
        plans=plans,
        active_images=active,
        cond_rows=cond_rows,
        generic=GenericRows(generic_conds(p, generation, generic_texts, prompt_parser, sd_samplers), prompt_parser),
        generic_rows=generic_rows,
        identity_rows=identity_rows,
        positions=positions,
        guide=Guide(settings, layout=hires_layout(p, generation)),
        checkpoint=_loaded_checkpoint(),
    )
    source_rows = [0] * len(generic_rows)
    for (image, part), index in generic_rows.items():
        source_rows[index] = cond_rows[image][part]
    state.generic_source_rows = torch.tensor(source_rows, dtype=torch.long)  # moved to the device once per step
    state.identity_index = torch.tensor(identity_rows, dtype=torch.long)  # moved to the device on first use
    if settings.mask_source == "attention" and state.guide.layout is None:  # a reused layout reads none
        state.capture = _make_capture(p, generation, positions)
    generation.remember(p, active, state.guide)
    _patch_sampler(p.sampler, state)
    return state


def _loaded_checkpoint() -> tuple[int, str]:
    """The refiner switch either replaces ``shared.sd_model`` or, with the default
    ``sd_checkpoints_limit`` of 1, loads new weights into the same object: compare both."""
    model = shared.sd_model
    return id(model), str(getattr(getattr(model, "sd_checkpoint_info", None), "filename", ""))


def _make_capture(p: Any, generation: Generation, positions: list[list[int]]) -> AttentionCapture | None:
    from modules import sd_unet

    unet = getattr(getattr(shared.sd_model, "model", None), "diffusion_model", None)
    cross_attention = unet is not None and bool(find_cross_attention(unet))
    mmdit = not cross_attention and find_mmdit(unet) is not None  # SD3: its joint attention
    reason = None
    if getattr(sd_unet, "current_unet", None) is not None:
        reason = "a custom UNet (e.g. TensorRT) is active"
    elif not cross_attention and not mmdit:
        reason = "this model has no attention layers DeGu can read"
    elif not all(positions):
        reason = "the subject's tokens could not be located"
    if reason:
        generation.note(p, f"DeGu: attention mask unavailable ({reason}); using the difference mask.")
        return None
    return MMDiTCapture(unet) if mmdit else AttentionCapture(unet)


# -- patches on this pass's sampler --------------------------------------------------------------
def _patch_sampler(sampler: Any, state: Pass) -> None:
    denoiser = sampler.model_wrap_cfg
    if getattr(denoiser, PASS_ATTR, None) is not None:  # already patched for this pass
        unpatch_sampler(sampler)
    original_combine = denoiser.combine_denoised
    original_launch = sampler.launch_sampling
    for owner, name in ((denoiser, "combine_denoised"), (sampler, "launch_sampling")):
        if name in vars(owner):
            state.replaced[name] = vars(owner)[name]

    def combine_denoised(self: Any, x_out: torch.Tensor, conds_list: list, uncond: Any, cond_scale: float) -> Any:
        denoised = original_combine(x_out, conds_list, uncond, cond_scale)
        return _add_degu(self, state, denoised, x_out, uncond, cond_scale)

    def launch_sampling(steps: int, func: Any) -> Any:
        try:
            if state.capture is not None:
                state.capture.__enter__()
            return launch_pass(state, sampler, original_launch, steps, func, host_state=shared.state,
                               nv_rng=getattr(sys.modules.get("modules.rng"), "nv_rng", None),
                               total_progress=getattr(shared, "total_tqdm", None))
        finally:
            unpatch_sampler(sampler)

    denoiser.combine_denoised = types.MethodType(combine_denoised, denoiser)
    sampler.launch_sampling = launch_sampling
    setattr(denoiser, PASS_ATTR, state)


def unpatch_sampler(sampler: Any) -> None:
    """Undo every patch on this sampler and remove the attention hooks. Safe to call twice."""
    denoiser = getattr(sampler, "model_wrap_cfg", None)
    state: Pass | None = getattr(denoiser, PASS_ATTR, None)
    if state is None:
        return
    if state.capture is not None:
        state.capture.remove()
    state.generation.sources |= state.guide.sources_used
    for owner, name in ((denoiser, "combine_denoised"), (sampler, "launch_sampling")):
        if name in vars(owner):
            delattr(owner, name)
        if name in state.replaced:
            setattr(owner, name, state.replaced[name])
    delattr(denoiser, PASS_ATTR)


# -- per step ------------------------------------------------------------------------------------
def on_cfg_denoiser(params: Any) -> None:
    """Insert the generic rows before the trailing uncond rows (script_callbacks.on_cfg_denoiser)."""
    denoiser = params.denoiser
    state: Pass | None = getattr(denoiser, PASS_ATTR, None)
    if state is None or state.off:
        return
    state.step_plan = None
    try:
        if not is_active(state.generation.settings, denoiser.step / max(denoiser.total_steps or 1, 1)):
            return
        if _loaded_checkpoint() != state.checkpoint:
            state.off = True
            state.generation.note(
                state.p, "DeGu: the model changed during sampling (refiner); DeGu is off after the switch."
            )
            return
        _insert_generic_rows(params, state)
    except Exception as error:  # never break the user's generation
        state.step_plan = None
        state.generation.note(state.p, f"DeGu: skipped a step after an error: {error!r}")


def _fit_tokens(generic: Any, text_cond: Any, state: Pass) -> Any:
    """Make the generic rows' token count equal the prompt rows' (ControlNet's marker row; padding
    as the host pads its shorter prompt rows in ``stack_conds``: the last vector repeated)."""

    def fit(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tokens, wanted = g.shape[1], target.shape[1]
        if wanted % CHUNK == 1 and tokens % CHUNK == 0:  # ControlNet's marker row leads the prompt rows
            g = torch.cat([target[:1, :1].expand(g.shape[0], 1, -1).to(g), g], dim=1)
            tokens += 1
        if tokens < wanted:
            g = torch.cat([g, g[:, -1:].repeat(1, wanted - tokens, 1)], dim=1)
        elif tokens > wanted:  # the prompt rows cannot grow without changing the host's own result
            state.generation.note(
                state.p,
                f"DeGu: the generic prompt is longer than the prompt ({tokens} > {wanted} tokens); its end was cut.",
            )
            g = g[:, :wanted]
        return g

    if isinstance(text_cond, dict):
        fitted = dict(generic)
        fitted["crossattn"] = fit(generic["crossattn"], text_cond["crossattn"])
        return prompt_parser.DictWithShape(fitted)
    return fit(generic, text_cond)


def _insert_generic_rows(params: Any, state: Pass) -> None:
    """Add the generic rows to this call's batch when the guide needs them at this call."""
    denoiser = params.denoiser
    text_cond = params.text_cond
    cond_rows = text_cond.shape[0]
    expected = sum(len(rows) for rows in state.cond_rows)
    if cond_rows != expected:
        raise ValueError(f"{cond_rows} prompt rows, expected {expected}")
    sigma0 = params.sigma[0]
    key = (tuple(params.x.shape), state.generic.entries_at(denoiser.step))
    with_context = state.guide.needs_context(key, has_uncond=not _uncond_skipped(denoiser, sigma0))
    # The timestep samplers (DDIM, PLMS, UniPC) guide noise predictions and pass timesteps, not sigmas.
    sigma = None
    if not isinstance(denoiser, CFGDenoiserTimesteps):
        state.identity_index = state.identity_index.to(params.sigma.device)
        sigma = params.sigma.index_select(0, state.identity_index)  # per guided image
    tokens = (text_cond["crossattn"] if isinstance(text_cond, dict) else text_cond).shape[1]
    if with_context:
        generic = _fit_tokens(state.generic.at(denoiser.step), text_cond, state)
        tokens = generic.shape[1]
        take = state.generic_source_rows.to(params.x.device)

        def insert(rows: torch.Tensor) -> torch.Tensor:
            return torch.cat([rows[:cond_rows], rows.index_select(0, take.to(rows.device)), rows[cond_rows:]])

        x, sigmas, image_cond = insert(params.x), insert(params.sigma), insert(params.image_cond)
        merged = catenate_conds([text_cond, generic])
        if isinstance(text_cond, dict):
            merged = prompt_parser.DictWithShape(merged)
        # Assign only once everything is built: the host reads all fields back.
        params.x, params.sigma, params.image_cond, params.text_cond = x, sigmas, image_cond, merged
    state.step_plan = StepPlan(denoiser.step, cond_rows, sigma0, with_context, sigma)
    if state.capture is not None:
        state.capture.begin_step(state.identity_rows, _indicator(state, tokens, params.x.device))


def _indicator(state: Pass, length: int, device: torch.device) -> torch.Tensor:
    """The subject-token indicator, built once per pass (token count and device rarely change)."""
    key = (length, str(device))
    if state.indicator_key != key:
        state.indicator, state.indicator_key = token_indicator(state.positions, length, device), key
    return state.indicator


def _uncond_skipped(denoiser: Any, sigma0: Any) -> bool:
    """Replicates CFGDenoiser.forward's skip_uncond (Skip Early CFG, NGMS): combine gets fake uncond."""
    opts = shared.opts
    if opts.skip_early_cond != 0.0 and denoiser.step / denoiser.total_steps <= opts.skip_early_cond:
        return True
    s_min_uncond = getattr(denoiser.sampler, "s_min_uncond", 0.0) or 0.0
    return bool((denoiser.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma0 < s_min_uncond)


def _add_degu(denoiser: Any, state: Pass, denoised: Any, x_out: torch.Tensor, uncond: Any, cond_scale: float) -> Any:
    plan, state.step_plan = state.step_plan, None
    if plan is None or plan.step != denoiser.step:
        if state.capture is not None:
            state.capture.disarm()
        return denoised
    try:
        batch = uncond.shape[0]
        u_all = x_out[-batch:]
        skipped = _uncond_skipped(denoiser, plan.sigma0)
        identity, context, uncond_rows = [], [], []
        for image in state.active_images:
            u = u_all[image]
            parts = state.plans[image].parts
            rows = state.cond_rows[image]
            weights = [part.weight for part in parts]
            s_parts = [x_out[row] for row in rows]
            identity.append(guidance.compose(u, s_parts, weights))
            uncond_rows.append(u)
            if plan.with_context:
                g_parts = [
                    x_out[plan.cond_rows + state.generic_rows[image, k]] if (image, k) in state.generic_rows
                    else s_parts[k]
                    for k in range(len(parts))
                ]
                context.append(guidance.compose(u, g_parts, weights))
        s = torch.stack(identity)
        g = torch.stack(context) if plan.with_context else None
        # With uncond skipped the host's result is the prompt alone: the no-uncond formula applies.
        u = None if skipped else torch.stack(uncond_rows)
        attention = state.capture.take() if state.capture is not None else None
        delta = state.guide.delta(u, s, g, cfg_scale=cond_scale, attention=attention, sigma=plan.sigma)
        index = torch.tensor(state.active_images, device=denoised.device)
        return denoised.index_add(0, index, delta.to(denoised.dtype))
    except Exception as error:
        state.generation.note(state.p, f"DeGu: skipped a step after an error: {error!r}")
        return denoised


# -- registration ----------------------------------------------------------------------------------
def register_callbacks() -> None:
    """Register the global callback once (the script module is re-executed on 'Reload UI')."""
    script_callbacks.remove_callbacks_for_function(on_cfg_denoiser)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="degu")


def undo_pass(p: Any) -> None:
    """Remove whatever a failed ``prepare_pass`` left on this pass's sampler."""
    sampler = getattr(p, "sampler", None)
    if sampler is not None:
        unpatch_sampler(sampler)
