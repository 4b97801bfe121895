"""What an adapter calls each step, so adapters stay thin: the gate, which rows to run, the output.

Nothing here synchronises with the device: no ``.item()``, no Python branch on tensor values.
Non-finite predictions are handled with ``torch.where`` and counted on the device; the adapter reads
the count once, at the end of the generation.

The context stream costs one model row per image and step. ``Guide.needs_context`` tells the adapter
before each model call whether the generic rows must run:
- not when the mask is known to be 1 everywhere and ``g`` cannot reach the output (balance +1, or
  the full mask at balance >= 0; with an uncond, or at identity scale 1);
- otherwise on every ``context_refresh``-th call (every call below balance 0, where the user asks
  for the context and a reused one is measurably weaker). In between, the context stream is rebuilt from
  the identity stream and the last measured difference ``(g - s) / sigma``: the subject word's
  effect on the prediction. Dividing by the noise level makes the stored difference independent of
  the parameterisation the host combines in (denoised ``x0 = x - sigma * eps`` or ``x - sigma * v``),
  so it can be carried to the next step's sigma. It is an approximation: on the lab's models it
  moves by a third (deterministic) to two thirds (ancestral) of its size per step, and the reused
  context is a little weaker than the measured one (README, "What it costs").
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from lib_degu import guidance, mask
from lib_degu.settings import DeGuSettings


def is_active(settings: DeGuSettings, step_fraction: float) -> bool:
    """Inside the active window ``[start, end)`` of the schedule (``end == 1`` includes the last step)."""
    if not settings.enabled:
        return False
    return settings.start <= step_fraction and (step_fraction < settings.end or settings.end >= 1.0)


@dataclass
class StepOutput:
    output: torch.Tensor  # the guided prediction, same shape/dtype/device as the inputs
    mask: torch.Tensor  # (B, 1, H, W) float32, the mask that was used
    source: str  # the mask source that actually ran: attention, difference, full or layout


@dataclass
class Guide:
    """Per-generation (per-pass) guidance state: the mask's EMA and what the user may want to see."""

    settings: DeGuSettings
    mask_state: mask.MaskState = field(default_factory=mask.MaskState)
    last_mask: torch.Tensor | None = None
    sources_used: set[str] = field(default_factory=set)
    nonfinite_steps: torch.Tensor | None = None  # device counter, read once at the end
    attention_share_sum: torch.Tensor | None = None  # per image, summed over steps (device)
    attention_share_steps: int = 0
    context_difference: torch.Tensor | None = None  # (g - s) / sigma at the last refresh
    context_key: Hashable | None = None  # what the stored difference belongs to (shape, prompt entry)
    calls_since_refresh: int = 0
    context_calls: int = 0  # model calls that ran the generic rows (for tests and the benchmark)
    reused_calls: int = 0  # model calls that rebuilt the context stream from the stored difference
    # A layout pass: the mask (B, 1, h, w) a first pass from the same noise found (``layout_mask``),
    # used at every step instead of the estimate, resized to the latent and moved by the balance.
    layout: torch.Tensor | None = None
    last_raw: torch.Tensor | None = None  # the last step's attention map (B, h, w), for ``layout_mask``
    last_image: torch.Tensor | None = None  # and the identity stream's prediction at that step

    @property
    def mask_is_full(self) -> bool:
        """The mask is 1 everywhere whatever the step shows: decided before the model runs."""
        settings = self.settings
        return settings.balance >= 1.0 or (settings.mask_source == "full" and settings.balance >= 0.0)

    def needs_context(self, key: Hashable, *, has_uncond: bool) -> bool:
        """Whether this model call must run the generic rows; call once per model call DeGu guides.

        ``key`` names what a stored difference is valid for (latent shape, the generic prompt's
        schedule entry): a new key forces a refresh (hires pass, prompt editing). ``has_uncond``:
        whether the host evaluates the unconditional rows at this call.
        """
        if self.mask_is_full and (has_uncond or self.settings.identity_scale == 1.0):
            return False  # M == 1: out = u + w*a_id*(s - u), or s; g cannot reach it
        # Below balance 0 the user asks for the context: measured, a reused context stream gave up most
        # of DeGu's advantage over the global mix (lab, balance -0.5: 0.050 -> 0.005); at -1 it is the
        # whole output. Measure it on every call there.
        due = self.calls_since_refresh + 1 >= self.settings.context_refresh or self.settings.balance < 0.0
        if due or self.context_difference is None or key != self.context_key:
            self.calls_since_refresh = 0
            self.context_key = key
            self.context_calls += 1
            return True
        self.calls_since_refresh += 1
        self.reused_calls += 1
        return False

    def context(
        self, s: torch.Tensor, g: torch.Tensor | None, sigma: torch.Tensor | float | None
    ) -> torch.Tensor:
        """The context stream: measured (and its difference stored), or rebuilt from ``s``.

        ``sigma``: per image (B,) or a number, the noise level of the call; None stores the
        difference unscaled (a caller whose predictions do not scale with sigma).
        """
        if g is not None:
            if self.settings.context_refresh > 1:
                self.context_difference = (g - s) / _sigma_scale(sigma, s)
            return g
        if self.context_difference is None or self.context_difference.shape != s.shape:
            # Only reached when the mask is 1 everywhere: (1 - M) * (g - u) is 0 for any finite g.
            return s
        return s + (self.context_difference * _sigma_scale(sigma, s)).to(s.dtype)

    def make_mask(
        self, s: torch.Tensor, g: torch.Tensor, attention: torch.Tensor | None
    ) -> tuple[torch.Tensor, str]:
        """The refined mask (B, 1, H, W) and the source used (attention falls back to difference)."""
        size = (int(s.shape[-2]), int(s.shape[-1]))
        source = self.settings.mask_source
        if source == "full":
            full = mask.full_mask(s.shape[0], size, s.device)
            return mask.apply_balance(full, self.settings.balance), source
        if self.layout is not None:
            fixed = mask.resize(self.layout[:, 0].to(device=s.device, dtype=torch.float32), size)
            return mask.apply_balance(fixed, self.settings.balance)[:, None], "layout"
        if source == "attention" and attention is None:
            source = "difference"
        if source == "attention":
            # Mean over pixels of the attention mass on the subject tokens: the share of the image's
            # cross-attention the subject took at this step.
            share = attention.flatten(1).mean(dim=1)
            self.attention_share_sum = share if self.attention_share_sum is None else self.attention_share_sum + share
            self.attention_share_steps += 1
        raw = attention if source == "attention" else mask.difference_map(s, g)
        if source == "attention":
            self.last_raw, self.last_image = attention, s
        # The attention map is coarser than the latent: ``snap`` pulls it onto the edges of the image the
        # identity stream predicts. The difference map is at the latent's own size already.
        image = s if source == "attention" else None
        return mask.refine(raw, size, self.settings.mask_params, self.mask_state, image=image), source

    def layout_mask(self) -> torch.Tensor | None:
        """The hard mask of where this pass put the subject (``mask.layout_mask`` of its last attention
        step), for a second pass from the same noise; None when no step read the attention."""
        if self.last_raw is None or self.last_image is None:
            return None
        size = (int(self.last_image.shape[-2]), int(self.last_image.shape[-1]))
        return mask.layout_mask(self.last_raw, self.last_image, size, blur=self.settings.mask_params.blur)

    def attention_share(self) -> list[float] | None:
        """Per image, the subject's share of cross-attention averaged over steps (one host sync)."""
        if self.attention_share_sum is None or not self.attention_share_steps:
            return None
        return (self.attention_share_sum / self.attention_share_steps).tolist()

    def __call__(
        self,
        u: torch.Tensor | None,
        s: torch.Tensor,
        g: torch.Tensor | None,
        *,
        cfg_scale: float | torch.Tensor,
        attention: torch.Tensor | None = None,
        sigma: torch.Tensor | float | None = None,
    ) -> StepOutput:
        """``g`` None: the generic rows did not run at this call (see ``needs_context``)."""
        g = self.context(s, g, sigma)
        m, source = self.make_mask(s, g, attention)
        out = guidance.combine(
            u,
            s,
            g,
            m,
            cfg_scale=cfg_scale,
            identity_scale=self.settings.identity_scale,
            context_scale=self.settings.context_scale,
        )
        self.last_mask = m
        self.sources_used.add(source)
        return StepOutput(out, m, source)

    def delta(
        self,
        u: torch.Tensor | None,
        s: torch.Tensor,
        g: torch.Tensor | None,
        *,
        cfg_scale: float | torch.Tensor,
        attention: torch.Tensor | None = None,
        sigma: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """DeGu's output minus the host's plain CFG on ``s``: what to add to the host's result.

        Adding a difference (instead of replacing the result) keeps whatever the host or another
        extension did to its result. A non-finite difference is replaced by 0 (the host's own
        result stands for that step) and counted.
        """
        plain = s if u is None else guidance.cfg(u, s, cfg_scale)
        difference = self(u, s, g, cfg_scale=cfg_scale, attention=attention, sigma=sigma).output - plain
        finite = torch.isfinite(difference).flatten(1).all(dim=1)
        bad = (~finite).sum()
        self.nonfinite_steps = bad if self.nonfinite_steps is None else self.nonfinite_steps + bad
        shape = (-1,) + (1,) * (difference.dim() - 1)
        return torch.where(finite.view(shape), difference, torch.zeros_like(difference))


def _sigma_scale(sigma: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor | float:
    """sigma broadcast against ``like`` (B, C, ...), kept away from 0 (the last step of some
    schedules), or 1 when the caller gives none."""
    if sigma is None:
        return 1.0
    if not isinstance(sigma, torch.Tensor):
        return max(float(sigma), 1e-6)
    sigma = sigma.to(device=like.device, dtype=torch.float32).clamp_min(1e-6)
    return sigma.reshape(-1, *([1] * (like.dim() - 1))) if sigma.dim() else sigma
