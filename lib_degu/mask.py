"""The subject mask of DESIGN.md §2: raw maps, one refinement path, the balance control.

Every function works on small (B, h, w) float32 maps and never synchronises with the device, so it
can run inside a CUDA sampling step. Shapes: raw maps (B, h, w); the final mask (B, 1, H, W) at the
latent size, which may change between passes (hires fix) and need not be square.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A high quantile, not the max: one hot pixel must not flatten the whole map.
NORMALISE_QUANTILE = 0.98
# Cross-attention has a floor everywhere: without subtracting a low quantile, the background stays
# above any useful threshold (measured on the trained miniatures: README, "Does it work?").
NORMALISE_LOW_QUANTILE = 0.05
# Edge snapping (``snap``): the window radius in latent pixels (two cells of the 1/2-resolution
# attention map the mask reads) and how different two pixels of the predicted image may look, in
# standard deviations of that image, before they stop sharing their mask. Chosen on the lab's dev
# split (README, "Does it work?").
SNAP_RADIUS = 4
SNAP_TOLERANCE = 0.4
# The layout pass's mask (``layout_mask``): the final map snapped to the final image and cut hard at
# this share of each image's own peak. Blurring and snapping lower the peak by how peaked the map is:
# a fixed cut (0.65, which covered 0.12 of the image, as the subjects do) sat just under the peak on
# the lab's committed models and selected almost nothing on peakier maps. Relative to the peak it tied
# the fixed cut on the committed models and no longer empties on peakier maps (README, "A layout pass").
LAYOUT_THRESHOLD = 0.83
LAYOUT_SNAP = 5
_EPS = 1e-8


@dataclass(frozen=True)
class MaskParams:
    """Refinement parameters; see DeGuSettings for their user-facing meaning and ranges."""

    threshold: float = 0.35
    softness: float = 0.1
    blur: float = 1.0
    ema: float = 0.5
    balance: float = 0.0
    snap: int = 0


def difference_map(s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``|s - g|`` averaged over every non-batch, non-spatial dim: (B, C, ..., H, W) -> (B, H, W)."""
    diff = (s - g).abs().float()
    return diff.flatten(1, -3).mean(dim=1)


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear; a no-op when the size already matches."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def attention_map(layer_maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average per-layer attention maps of any resolutions, each (B, h_l, w_l), at ``size``."""
    if not layer_maps:
        raise ValueError("attention_map needs at least one layer map")
    total = torch.zeros(
        (layer_maps[0].shape[0], *size), dtype=torch.float32, device=layer_maps[0].device
    )
    for layer in layer_maps:
        total += resize(layer.float(), size)
    return total / len(layer_maps)


def normalise(
    maps: torch.Tensor, quantile: float = NORMALISE_QUANTILE, low_quantile: float | None = NORMALISE_LOW_QUANTILE
) -> torch.Tensor:
    """Per image: map the ``low_quantile`` to 0 and ``quantile`` to 1, clipped to [0, 1].

    ``low_quantile=None`` keeps 0 at 0 (divide by the high quantile). A flat map (no spread between
    the quantiles: nothing is known about where the subject is) becomes 1 everywhere, so DeGu is the
    plain prompt there rather than a mask made of rounding noise.
    """
    flat = maps.float().flatten(1)
    top = torch.quantile(flat, quantile, dim=1)
    if low_quantile is None:
        return (maps.float() / top.clamp_min(_EPS)[:, None, None]).clamp(0.0, 1.0)
    bottom = torch.quantile(flat, low_quantile, dim=1)
    spread = top - bottom
    scaled = ((maps.float() - bottom[:, None, None]) / spread.clamp_min(_EPS)[:, None, None]).clamp(0.0, 1.0)
    flat_map = spread <= 1e-6 * top.abs().clamp_min(_EPS)
    return torch.where(flat_map[:, None, None], torch.ones_like(scaled), scaled)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, h, w) maps; ``sigma`` in pixels of these maps."""
    if sigma < 1e-3:  # below a thousandth of a pixel the kernel is a delta (and underflows)
        return maps
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    # Replicate padding is valid for any map size (reflect needs the map larger than the radius).
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def soft_threshold(maps: torch.Tensor, threshold: float, softness: float) -> torch.Tensor:
    """``sigmoid((m - threshold) / softness)``; softness 0 is a hard step."""
    if softness <= 0:
        return (maps >= threshold).to(maps.dtype)
    return torch.sigmoid((maps - threshold) / softness)


def snap_weights(
    image: torch.Tensor, radius: int = SNAP_RADIUS, tolerance: float = SNAP_TOLERANCE
) -> torch.Tensor:
    """How much each pixel of ``image`` (B, C, ..., H, W) looks like each neighbour in its window.

    Returns (B, (2 * radius + 1) ** 2, H * W), each pixel's weights summing to 1:
    ``exp(-d^2 / (2 * tolerance^2))``, ``d^2`` the mean squared difference over channels of the image
    standardised per image (so ``tolerance`` means the same on any backbone's latents).
    """
    image = image.float().flatten(1, -3)
    batch, channels, height, width = image.shape
    centred = image - image.mean(dim=(-2, -1), keepdim=True)
    scale = centred.pow(2).mean(dim=(1, 2, 3)).sqrt().clamp_min(_EPS)
    standard = centred / scale[:, None, None, None]
    size = 2 * radius + 1
    windows = F.unfold(F.pad(standard, (radius,) * 4, mode="replicate"), size)
    windows = windows.view(batch, channels, size * size, height * width)
    distance = (windows - standard.view(batch, channels, 1, height * width)).pow(2).mean(dim=1)
    weights = torch.exp(-distance / (2 * tolerance**2))
    return weights / weights.sum(dim=1, keepdim=True)


def snap_to_image(maps: torch.Tensor, weights: torch.Tensor, rounds: int) -> torch.Tensor:
    """Edge-aware smoothing of (B, H, W) maps: each round, a pixel takes the mean of the pixels in
    its window that look like it (``snap_weights``, a joint bilateral filter without a spatial term).

    The attention map is coarse (one value per 2x2 latent pixels or more) and spills over the
    subject's edge; in the predicted image the subject's edge is sharp. Averaging only over
    look-alike pixels pulls the spilled background down to the background's level and keeps the
    subject whole, so the mask follows the edge the image already shows.
    """
    if rounds <= 0:
        return maps
    batch, height, width = maps.shape
    size = math.isqrt(weights.shape[1])
    radius = size // 2
    for _ in range(rounds):
        windows = F.unfold(F.pad(maps[:, None], (radius,) * 4, mode="replicate"), size)
        maps = (weights * windows).sum(dim=1).view(batch, height, width)
    return maps


def apply_balance(mask: torch.Tensor, balance: float) -> torch.Tensor:
    """Move the mask towards 1 (``balance > 0``, fidelity) or 0 (``balance < 0``, editability).

    Linear in ``balance`` on each side, so monotone; exactly 1 at +1, exactly 0 at -1, the mask at 0.
    """
    if balance >= 0:
        return 1 - (1 - balance) * (1 - mask)
    return (1 + balance) * mask


class MaskState:
    """The exponential moving average across steps; restarts when the latent size changes."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None

    def update(self, mask: torch.Tensor, ema: float) -> torch.Tensor:
        prev = self.previous
        if prev is not None and prev.shape == mask.shape and ema > 0:
            # A non-finite step (DeGu stepped aside for it) must not poison every later step.
            prev = torch.where(torch.isfinite(prev), prev, mask)
            mask = ema * prev + (1 - ema) * mask
        self.previous = mask
        return mask

    def reset(self) -> None:
        self.previous = None


def locate(
    raw: torch.Tensor, size: tuple[int, int], blur: float, snap: int, image: torch.Tensor | None
) -> torch.Tensor:
    """Raw map (B, h, w) -> (B, H, W) in [0, 1] at the latent ``size``: normalised, blurred (``blur``
    in latent pixels, scaled to the map's own resolution), resized, snapped to ``image``'s edges
    (``snap`` rounds; skipped without an image). The part of the refinement before the threshold."""
    m = normalise(raw)
    m = gaussian_blur(m, blur * raw.shape[-2] / size[0])
    m = resize(m, size)
    if snap > 0 and image is not None:
        m = snap_to_image(m, snap_weights(image), snap)
    return m


def layout_mask(
    raw: torch.Tensor,
    image: torch.Tensor | None,
    size: tuple[int, int],
    *,
    blur: float = 1.0,
    threshold: float = LAYOUT_THRESHOLD,
    snap: int = LAYOUT_SNAP,
) -> torch.Tensor:
    """Where a finished pass put the subject: its last step's raw map (B, h, w) and predicted image
    -> a hard mask (B, 1, H, W), for a second pass from the same noise (a *layout pass*).

    Hard and tight, because that is what pays: on the lab a mask as tight as the subject, known from
    the first step, gained about three times the defaults' advantage over the global mix, while the
    soft final mask (a third of the image) gained little and a tight mask in the wrong place lost
    (README, "A layout pass"). The cut is ``threshold`` times each image's own peak, so it does not
    depend on how peaked the model's maps are. A flat map (nothing known) is 1 everywhere after
    ``normalise``, and so is its layout: the second pass is then the plain prompt.
    """
    located = locate(raw, size, blur, snap, image)
    peak = located.flatten(1).amax(1).clamp_min(_EPS)[:, None, None]
    return (located >= threshold * peak).float()[:, None]


def refine(
    raw: torch.Tensor,
    size: tuple[int, int],
    params: MaskParams,
    state: MaskState | None = None,
    image: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw map (B, h, w) of any source -> final mask (B, 1, H, W) at the latent ``size``.

    Normalise, blur (``params.blur`` is in latent pixels, scaled to the map's own resolution),
    resize, snap to the edges of ``image`` (the step's predicted image (B, C, ..., H, W); skipped
    without one), soft threshold, EMA across steps, then the balance.
    """
    m = locate(raw, size, params.blur, params.snap, image)
    m = soft_threshold(m, params.threshold, params.softness)
    if state is not None:
        m = state.update(m, params.ema)
    return apply_balance(m, params.balance)[:, None]


def full_mask(batch: int, size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """``M = 1`` everywhere: no spatial mixing."""
    return torch.ones((batch, 1, *size), dtype=torch.float32, device=device)
