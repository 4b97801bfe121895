"""DDIM sampling of the miniature with DeGu's own code in the loop.

The step does what the WebUI adapters do: the identity (prompt), context (generic) and
unconditional rows go through the UNet in one call, ``lib_degu.attention.AttentionCapture`` reads
the subject's cross-attention from the identity rows, and ``lib_degu.step.Guide`` refines the mask
and combines the three predictions. Nothing of DeGu is re-implemented here, so what the experiment
measures is what users run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lab.model import CONTEXT_LENGTH, LATENT_CHANNELS, LATENT_SIZE, Miniature, Schedule, to_image
from lib_degu import guidance
from lib_degu.attention import AttentionCapture, token_indicator
from lib_degu.prompts import make_generic_prompt
from lib_degu.settings import DeGuSettings
from lib_degu.step import Guide

CFG_SCALE = 5.0
STEPS = 20
ETA = 1.0  # DDIM's eta: 1 is ancestral (DDPM-like) sampling, which forgives a small model's errors


@dataclass
class Result:
    images: torch.Tensor  # (B, 3, 32, 32) in [-1, 1]
    masks: list[torch.Tensor] = field(default_factory=list)  # per step (B, 1, 16, 16): the mask DeGu used
    # Per step (B, 12, 16, 16): the identity stream's denoised prediction, the image the mask snaps to.
    predicted: list[torch.Tensor] = field(default_factory=list)
    probed: list[list[torch.Tensor]] = field(default_factory=list)  # per probe, per step (B, 16, 16)
    # Per step that ran the generic rows: (step, sigma, s, g, u) as denoised predictions.
    streams: list[tuple[int, float, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    model_rows: int = 0  # image rows the UNet evaluated, summed over steps (the cost)
    layout: torch.Tensor | None = None  # (B, 1, 16, 16) where this run put the subject: ``Guide.layout_mask``


@dataclass
class FixedMaskGuide(Guide):
    """DeGu as users run it, but with a given mask (B, 1, 16, 16) instead of the one it estimates:
    the experiment's *oracle*, what a perfect mask would give. ``fixed_steps``: the steps that use
    it (all by default); the others use the estimated mask (which phase of sampling the mask
    matters in)."""

    fixed: torch.Tensor | None = None
    fixed_steps: range | None = None
    calls: int = 0

    def make_mask(
        self, s: torch.Tensor, g: torch.Tensor, attention: torch.Tensor | None
    ) -> tuple[torch.Tensor, str]:
        assert self.fixed is not None
        step, self.calls = self.calls, self.calls + 1
        if self.fixed_steps is not None and step not in self.fixed_steps:
            return super().make_mask(s, g, attention)
        return self.fixed.to(device=s.device, dtype=torch.float32), "fixed"


def timesteps(steps: int, schedule: Schedule) -> list[int]:
    return torch.linspace(schedule.steps - 1, 0, steps).round().long().tolist()


def initial_noise(seeds: Sequence[int]) -> torch.Tensor:
    return torch.stack([
        torch.randn((LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE), generator=torch.Generator().manual_seed(seed))
        for seed in seeds
    ])


@torch.no_grad()
def sample(
    model: Miniature,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: DeGuSettings | None = None,
    *,
    steps: int = STEPS,
    cfg_scale: float = CFG_SCALE,
    negative: str = "",
    keep_maps: bool = False,
    keep_streams: bool = False,
    eta: float = ETA,
    probes: Sequence[AttentionCapture] = (),
    fixed_mask: torch.Tensor | None = None,
    fixed_steps: range | None = None,
    layout: torch.Tensor | None = None,
) -> Result:
    """Plain CFG when ``settings`` is None or disabled, else DeGu with those settings (and, given
    ``fixed_mask``, that mask at every step of ``fixed_steps``, default all: ``FixedMaskGuide``).
    ``layout``: a first run's ``Result.layout`` from the same seeds, used at every step (a layout pass).

    ``probes``: extra captures (other layer choices) read on the identity rows at every step, for
    measuring maps DeGu did not use; they must be entered by the caller.
    """
    schedule = Schedule()
    x = initial_noise(seeds)
    # Per-image noise streams: an image's samples do not depend on the rest of its batch.
    generators = [torch.Generator().manual_seed(10_000 + seed) for seed in seeds]
    batch = len(prompts)
    degu = settings is not None and settings.enabled
    rows = list(prompts)
    if degu:
        assert settings is not None
        rows += [make_generic_prompt(p, settings.subject, settings.generic) for p in prompts]
        positions = [model.tokenizer.positions(p, settings.subject) for p in prompts]
        indicator = token_indicator(positions, CONTEXT_LENGTH)
        guide = (Guide(settings, layout=layout) if fixed_mask is None
                 else FixedMaskGuide(settings, fixed=fixed_mask, fixed_steps=fixed_steps))
        capture = AttentionCapture(model.unet)
    rows += [negative] * batch
    context = model.encode(rows)
    result = Result(images=x, probed=[[] for _ in probes])
    ts = timesteps(steps, schedule)
    alphas = schedule.alphas_cumprod
    with capture if degu else contextlib.nullcontext():
        for i, t in enumerate(ts):
            if degu:
                capture.begin_step(list(range(batch)), indicator)
                for probe in probes:
                    probe.begin_step(list(range(batch)), indicator)
            a_t = alphas[t]
            a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            # The hosts combine denoised predictions, x0 = x / sqrt(a) - sigma * eps (k-diffusion's
            # sigma), so DeGu gets those here too, with the sigma of the step.
            sigma_t = ((1 - a_t) / a_t).sqrt()
            with_context = degu and guide.needs_context(tuple(x.shape), has_uncond=True)
            stream_rows = [0, 1, 2] if with_context else [0, 2] if degu else [0, 1]
            take = torch.cat([torch.arange(batch) + k * batch for k in stream_rows])
            eps = model.unet(x.repeat(len(stream_rows), 1, 1, 1), t, encoder_hidden_states=context[take]).sample
            result.model_rows += len(take)
            x0 = x.repeat(len(stream_rows), 1, 1, 1) / a_t.sqrt() - sigma_t * eps
            if degu:
                s, *measured, u = x0.chunk(len(stream_rows))
                g = measured[0] if measured else None
                attention = capture.take()
                for probe, maps in zip(probes, result.probed, strict=True):
                    maps.append(probe.take())
                x0 = guide(u, s, g, cfg_scale=cfg_scale, attention=attention, sigma=sigma_t).output
                if keep_maps:
                    result.masks.append(guide.last_mask.clone())
                    result.predicted.append(s.clone())
                if keep_streams and g is not None:
                    result.streams.append((i, float(sigma_t), s, g, u))
            else:
                s, u = x0.chunk(2)
                x0 = guidance.cfg(u, s, cfg_scale)
            # Static thresholding, as pixel-space diffusion does: x0 lives in [-1, 1]; the noise
            # direction is recomputed from the clipped x0 so the step stays on the DDIM path.
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if eta > 0 and i + 1 < len(ts):
                x = x + sigma * torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators])
    result.images = to_image(x).clamp(-1, 1)
    if degu:
        result.layout = guide.layout_mask()
    return result
