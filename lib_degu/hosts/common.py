"""Pieces both host adapters share. Imports no host module: hosts pass their functions in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lib_degu.plan import ImagePlan, plan_image
from lib_degu.settings import DeGuSettings
from lib_degu.step import Guide
from lib_degu.tokens import differing_positions, flatten_chunks


@dataclass
class Generation:
    """Per-generation state, kept on ``p`` (never in module globals): settings, the notes already
    shown, DeGu's own conditioning caches, the mask sources that actually ran."""

    settings: DeGuSettings
    notes: list[str] = field(default_factory=list)
    caches: dict[str, list] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    # Per batch iteration: the active images and the guide of its last pass (hires replaces first).
    guides: dict[int, tuple[list[int], Any]] = field(default_factory=dict)
    all_guides: list[Any] = field(default_factory=list)

    def note(self, p: Any, message: str) -> None:
        """Tell the user once: in the console and in the comments shown under the result."""
        if message in self.notes:
            return
        self.notes.append(message)
        print(f"[DeGu] {message}")
        if hasattr(p, "comment"):
            p.comment(message)

    def remember(self, p: Any, active_images: list[int], guide: Any) -> None:
        self.guides[int(getattr(p, "iteration", 0) or 0)] = (list(active_images), guide)
        self.all_guides.append(guide)

    def finish(self, p: Any) -> None:
        """End of the generation: report what needs the device's counters (one sync, after sampling)."""
        bad = sum(int(g.nonfinite_steps) for g in self.all_guides if g.nonfinite_steps is not None)
        if bad:
            self.note(p, f"DeGu: non-finite values in {bad} image-step(s); the WebUI's own result was used there.")
        for guide in self.all_guides:
            self.sources |= guide.sources_used
        if self.settings.mask_source == "attention" and self.sources and "attention" not in self.sources:
            if not any("attention mask unavailable" in note for note in self.notes):
                # A capture that never fired (a kernel the network does not call) must not pass silently
                self.note(p, "DeGu: attention mask unavailable (no attention map was read); used the difference mask.")

    def sources_so_far(self) -> set[str]:
        """The mask sources that ran up to now (host-side sets: no device sync)."""
        return self.sources.union(*(guide.sources_used for guide in self.all_guides))

    def previews(self) -> list[tuple[int, int, Any, float | None]]:
        """(iteration, image in batch, final mask (h, w) on the CPU, subject attention share)."""
        out = []
        for iteration, (images, guide) in sorted(self.guides.items()):
            if guide.last_mask is None:
                continue
            masks = guide.last_mask[:, 0].float().cpu()
            shares = guide.attention_share()
            for k, image in enumerate(images):
                out.append((iteration, image, masks[k], shares[k] if shares else None))
        return out

    def cache(self, p: Any) -> list:
        """DeGu's own ``[params, result]`` cache per pass kind; the host's class-level one is shared."""
        return self.caches.setdefault("hr" if getattr(p, "is_hr_pass", False) else "first", [None, None])


def plan_prompts(p: Any, generation: Generation, parts_of: Callable[[str], list[tuple[str, float]]]) -> list[ImagePlan]:
    """One plan per image of this pass (hires prompts in the hires pass); tells the user about
    images whose prompt lacks the subject."""
    prompts = list(p.hr_prompts if getattr(p, "is_hr_pass", False) else p.prompts)
    plans = [plan_image(parts_of(prompt), generation.settings) for prompt in prompts]
    missing = [i for i, plan in enumerate(plans) if not plan.active]
    if missing:
        numbers = ", ".join(str(i + 1) for i in missing)
        which = "the prompt" if len(missing) == len(plans) else f"the prompt of image(s) {numbers}"
        generation.note(
            p,
            f"DeGu: subject '{generation.settings.subject}' not found in {which}; "
            "made without DeGu (as if it were off).",
        )
    return plans


def subject_positions(
    tokenize_line: Callable[[str], tuple[Sequence[Any], int]],
    text: str,
    generic: str,
    subject: str,
    chunk_length: int | None = 77,
) -> list[int]:
    """Key positions of the subject in ``text``'s conditioning: the tokens the generic text lacks,
    plus every vector slot of a Textual Inversion embedding named like the subject."""
    chunks, _ = tokenize_line(text)
    generic_chunks, _ = tokenize_line(generic)
    positions = set(
        differing_positions(
            flatten_chunks([c.tokens for c in chunks], chunk_length),
            flatten_chunks([c.tokens for c in generic_chunks], chunk_length),
        )
    )
    for index, chunk in enumerate(chunks):
        for fix in getattr(chunk, "fixes", None) or []:
            if chunk_length is not None and getattr(fix.embedding, "name", "").lower() == subject.strip().lower():
                first = index * chunk_length + fix.offset + 1
                positions.update(range(first, first + int(fix.embedding.vectors)))
    return sorted(positions)


def sd3_subject_keys(
    clip_tokenize_line: Callable[[str], tuple[Sequence[Any], int]],
    t5_tokenize_line: Callable[[str], tuple[Sequence[Any], int]] | None,
    text: str,
    generic: str,
    subject: str,
    *,
    t5_cut_to_clip: bool,
) -> list[int]:
    """Subject key positions in SD3/SD3.5's context: the CLIP-L/G chunks (77 keys each, L and G side
    by side in one key), then the T5 tokens (no BOS) from ``77 * chunks`` on.

    Both encoders' subject keys count, their masses summed: in the joint softmax an image token's
    attention to the subject is split between its CLIP and its T5 keys in proportions that vary with
    the block and the model, and only the sum is the mass on the subject whatever that split. Pass
    ``t5_tokenize_line=None`` when T5 is off (the default in both hosts): the T5 part is then zeros,
    every T5 key is the context embedder's bias, identical to the others, and its attention mass says
    where the image looks at padding, not at the subject. ``t5_cut_to_clip``: A1111 cuts the T5 part
    to the CLIP part's length.
    """
    positions = subject_positions(clip_tokenize_line, text, generic, subject)
    if t5_tokenize_line is None:
        return positions
    clip_length = 77 * len(clip_tokenize_line(text)[0])
    t5 = subject_positions(t5_tokenize_line, text, generic, subject, chunk_length=None)
    return positions + [clip_length + p for p in t5 if not t5_cut_to_clip or p < clip_length]


def and_parts(prompt_parser: Any, prompt: str) -> list[tuple[str, float]]:
    """The host's own AND split: (text, weight) per part, in the order of the cond rows."""
    indexes, flat, _ = prompt_parser.get_multicond_prompt_list([prompt])
    return [(flat[i], weight) for i, weight in indexes[0]]


def generic_conds(
    p: Any, generation: Generation, texts: list[str], prompt_parser: Any, sd_samplers: Any, **conditioning: Any
) -> Any:
    """The generic prompts' schedules, the way the host makes its own first-pass or hires conds
    (``setup_conds`` / ``calculate_hr_conds``), through ``p.get_conds_with_caching`` and DeGu's cache.
    Both hosts share these module interfaces; ``conditioning`` adds host-specific fields."""
    hires = bool(getattr(p, "is_hr_pass", False))
    hires_steps = None
    if hires:
        config = sd_samplers.find_sampler_config(p.hr_sampler_name or p.sampler_name)
        steps = p.hr_second_pass_steps or p.steps
        hires_steps = config.total_steps(steps) if config else steps
    prompts = prompt_parser.SdConditioning(
        texts,
        width=p.hr_upscale_to_x if hires else p.width,
        height=p.hr_upscale_to_y if hires else p.height,
        **conditioning,
    )
    return p.get_conds_with_caching(
        prompt_parser.get_learned_conditioning,
        prompts,
        p.firstpass_steps,
        [generation.cache(p)],
        p.hr_extra_network_data if hires else p.extra_network_data,
        hires_steps,
    )


@dataclass
class GenericRows:
    """The generic prompts' rows at a sampling step, from their schedules (one per row).

    The rows change only when a prompt-editing schedule moves to its next entry, so they are stacked
    again only then. Prompts in a batch can differ in chunk count, which the host's
    ``reconstruct_cond_batch`` cannot stack: rows are padded like the host pads its prompt rows
    (``stack_conds`` in ``reconstruct_multicond_batch``: each shorter row's last vector repeated).
    """

    schedules: list
    prompt_parser: Any
    _entries: tuple[int, ...] | None = None
    _rows: Any = None

    def entries_at(self, step: int) -> tuple[int, ...]:
        """Per row, the schedule entry ``reconstruct_cond_batch`` picks: the first whose
        ``end_at_step`` is not yet passed. A change means the generic rows change (prompt editing)."""
        return tuple(
            next((i for i, entry in enumerate(schedule) if step <= entry.end_at_step), 0) for schedule in self.schedules
        )

    def at(self, step: int) -> Any:
        entries = self.entries_at(step)
        if entries != self._entries:
            conds = [schedule[i].cond for schedule, i in zip(self.schedules, entries, strict=True)]
            stack = self.prompt_parser.stack_conds
            if isinstance(conds[0], dict):
                self._rows = self.prompt_parser.DictWithShape({k: stack([c[k] for c in conds]) for k in conds[0]})
            else:
                self._rows = stack(conds)
            self._entries = entries
        return self._rows


# -- the layout pass ---------------------------------------------------------------------------------
@dataclass
class NoiseState:
    """Everything a pass draws noise from, to sample a second time from the same noise: the image
    RNG ``p.rng`` (the initial noise, and the ancestral samplers' noise through the host's
    TorchHijack), and the global torch RNGs (SDE samplers without a seed, Forge's DDPM)."""

    rng: Any
    generator_states: list[Any]
    is_first: Any
    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    nv: tuple[Any, Any] | None  # A1111's global NV ("GPU-like") generator and its offset

    @classmethod
    def save(cls, p: Any, nv_rng: Any = None) -> NoiseState:
        rng = getattr(p, "rng", None)
        generators = list(getattr(rng, "generators", None) or [])
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(
            rng=rng,
            generator_states=[_generator_state(g) for g in generators],
            is_first=getattr(rng, "is_first", None),
            cpu=torch.get_rng_state(),
            cuda=cuda,
            nv=(nv_rng, getattr(nv_rng, "offset", None)) if nv_rng is not None else None,
        )

    def restore(self) -> None:
        for generator, state in zip(getattr(self.rng, "generators", None) or [], self.generator_states, strict=False):
            if hasattr(generator, "set_state"):
                generator.set_state(state)
            elif state is not None:  # the NV source's philox generator: its position is an offset
                generator.offset = state
        if self.is_first is not None:
            self.rng.is_first = self.is_first
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        if self.nv is not None and self.nv[1] is not None:
            self.nv[0].offset = self.nv[1]


def _generator_state(generator: Any) -> Any:
    if hasattr(generator, "get_state"):
        return generator.get_state()
    return getattr(generator, "offset", None)


LAYOUT_PASS_LABELS = ("DeGu layout pass 1/2", "DeGu layout pass 2/2")


def launch_pass(
    state: Any, sampler: Any, launch: Callable[[int, Any], Any], steps: int, func: Any, *,
    host_state: Any, nv_rng: Any = None, total_progress: Any = None,
) -> Any:
    """The pass's sampling loop (``launch(steps, func)``): once, or twice for the layout pass.
    ``host_state``: the host's ``shared.state`` (interrupt, skip, stop); ``total_progress``: its
    ``shared.total_tqdm``, the console's "Total progress" bar."""
    if not wants_layout_pass(state):
        return launch(steps, func)

    def stopped() -> bool:
        return bool(host_state.interrupted or host_state.skipped or getattr(host_state, "stopping_generation", False))

    # The host's progress bar restarts with each loop: its text says which pass is running, and the
    # console's total counts the second loop too.
    passes = enumerate(LAYOUT_PASS_LABELS)

    def labelled_launch(steps: int, func: Any) -> Any:
        before = getattr(host_state, "textinfo", None)
        index, host_state.textinfo = next(passes)
        if index:
            extend_total_progress(total_progress, steps)
        try:
            return launch(steps, func)
        finally:
            host_state.textinfo = before

    return sample_with_layout_pass(state, sampler, labelled_launch, steps, func, stopped=stopped, nv_rng=nv_rng)


def extend_total_progress(total_progress: Any, steps: int) -> None:
    """Add a second loop's steps to the console's "Total progress" bar, which the host sized for one
    loop per batch (as it adds the hires pass's). Its only record of the total is the tqdm it keeps in
    ``_tqdm``, made at the first step; without one (bars turned off) there is nothing to extend."""
    bar = getattr(total_progress, "_tqdm", None)
    total = getattr(bar, "total", None)
    if isinstance(total, (int, float)) and hasattr(total_progress, "updateTotal"):
        total_progress.updateTotal(total + steps)


def sample_with_layout_pass(
    state: Any, sampler: Any, launch: Callable[[int, Any], Any], steps: int, func: Any, *,
    stopped: Callable[[], bool], nv_rng: Any = None,
) -> Any:
    """Run the host's sampling loop (``launch(steps, func)``, its ``Sampler.launch_sampling``) twice
    from the same noise: the first pass is DeGu as usual and finds where the subject lands
    (``Guide.layout_mask``); the second guides with that layout at every step.

    ``state``: the adapter's pass (``guide``, ``capture``, ``p``, ``generation``, ``active_images``);
    its guide is replaced and its capture removed for the second pass. Noise: ``NoiseState``; the
    loop's start latent is given to the first pass as a copy, so a sampler that updates it in place
    cannot change the second pass's start. An interrupt, a skip or a pass that read no attention
    keeps the first pass's result.
    """
    noise = NoiseState.save(state.p, nv_rng)
    own_func = "func" in vars(sampler)
    original_func = sampler.func
    sampler.func = lambda model, x, *args, **kwargs: original_func(model, x.clone(), *args, **kwargs)
    try:
        first = launch(steps, func)
    finally:
        if own_func:
            sampler.func = original_func
        else:
            del sampler.func
    layout = state.guide.layout_mask()
    if layout is None:
        state.generation.note(
            state.p, "DeGu: the layout pass needs the attention mask, which this pass did not read; sampled once."
        )
        return first
    if stopped():
        return first
    noise.restore()
    sampler.model_wrap_cfg.step = 0
    if state.capture is not None:  # the second pass reads no attention: no hooks, no maps per step
        state.capture.remove()
        state.capture = None
    first_guide, state.guide = state.guide, Guide(state.generation.settings, layout=layout)
    # The preview's caption: the subject's share of attention is the first pass's (the second reads none).
    state.guide.attention_share_sum = first_guide.attention_share_sum
    state.guide.attention_share_steps = first_guide.attention_share_steps
    state.generation.remember(state.p, state.active_images, state.guide)
    return launch(steps, func)


def wants_layout_pass(state: Any) -> bool:
    """Whether this pass samples twice; says why not when the user asked and it cannot."""
    if not state.generation.settings.layout_pass or state.guide.layout is not None:
        return False  # off, or a hires pass that reuses the base pass's layout
    if state.capture is None:
        state.generation.note(
            state.p, "DeGu: the layout pass needs the attention mask, which is not available here; sampled once."
        )
        return False
    p = state.p
    if getattr(p, "refiner_checkpoint_info", None) is not None and (getattr(p, "refiner_switch_at", 1.0) or 0.0) < 1.0:
        # The host switches models inside the loop: the first pass would leave the refiner loaded.
        state.generation.note(p, "DeGu: the layout pass does not run with a refiner; sampled once.")
        return False
    return True


def hires_layout(p: Any, generation: Generation) -> Any:
    """The layout the base pass of this batch guided with, for a hires pass (None otherwise): the
    layout of the guide remembered for this batch iteration."""
    if not getattr(p, "is_hr_pass", False):
        return None
    remembered = generation.guides.get(int(getattr(p, "iteration", 0) or 0))
    return None if remembered is None else remembered[1].layout
