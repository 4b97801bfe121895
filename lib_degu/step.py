"""What an adapter calls each step, so adapters stay thin: the gate and the guided output.

Nothing here synchronises with the device: no ``.item()``, no Python branch on tensor values.
Non-finite predictions are handled with ``torch.where`` and counted on the device; the adapter reads
the count once, at the end of the generation.
"""

from __future__ import annotations

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
    source: str  # the mask source that actually ran: attention, difference or full


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

    def make_mask(
        self, s: torch.Tensor, g: torch.Tensor, attention: torch.Tensor | None
    ) -> tuple[torch.Tensor, str]:
        """The refined mask (B, 1, H, W) and the source used (attention falls back to difference)."""
        size = (int(s.shape[-2]), int(s.shape[-1]))
        source = self.settings.mask_source
        if source == "full":
            full = mask.full_mask(s.shape[0], size, s.device)
            return mask.apply_balance(full, self.settings.balance), source
        if source == "attention" and attention is None:
            source = "difference"
        if source == "attention":
            # Mean over pixels of the attention mass on the subject tokens: the share of the image's
            # cross-attention the subject took at this step.
            share = attention.flatten(1).mean(dim=1)
            self.attention_share_sum = share if self.attention_share_sum is None else self.attention_share_sum + share
            self.attention_share_steps += 1
        raw = attention if source == "attention" else mask.difference_map(s, g)
        return mask.refine(raw, size, self.settings.mask_params, self.mask_state), source

    def attention_share(self) -> list[float] | None:
        """Per image, the subject's share of cross-attention averaged over steps (one host sync)."""
        if self.attention_share_sum is None or not self.attention_share_steps:
            return None
        return (self.attention_share_sum / self.attention_share_steps).tolist()

    def __call__(
        self,
        u: torch.Tensor | None,
        s: torch.Tensor,
        g: torch.Tensor,
        *,
        cfg_scale: float | torch.Tensor,
        attention: torch.Tensor | None = None,
    ) -> StepOutput:
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
        g: torch.Tensor,
        *,
        cfg_scale: float | torch.Tensor,
        attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DeGu's output minus the host's plain CFG on ``s``: what to add to the host's result.

        Adding a difference (instead of replacing the result) keeps whatever the host or another
        extension did to its result. A non-finite difference is replaced by 0 (the host's own
        result stands for that step) and counted.
        """
        plain = s if u is None else guidance.cfg(u, s, cfg_scale)
        difference = self(u, s, g, cfg_scale=cfg_scale, attention=attention).output - plain
        finite = torch.isfinite(difference).flatten(1).all(dim=1)
        bad = (~finite).sum()
        self.nonfinite_steps = bad if self.nonfinite_steps is None else self.nonfinite_steps + bad
        shape = (-1,) + (1,) * (difference.dim() - 1)
        return torch.where(finite.view(shape), difference, torch.zeros_like(difference))
