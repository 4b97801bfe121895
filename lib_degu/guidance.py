"""The guidance step of DESIGN.md §1, line by line.

Symbols: ``u`` unconditional prediction, ``s`` identity stream (the prompt as written), ``g``
context stream (the subject replaced by the generic word), ``M`` the subject mask in [0, 1].
All predictions share one parameterisation (x0, eps or flow velocity): the combination is affine,
so it is valid in any of them.
"""

from __future__ import annotations

import torch


def broadcast_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) mask -> shape broadcastable against ``like`` (B, C, [T, ...], H, W), in its dtype.

    The mask is small, so casting it (not the predictions) keeps the batch in its own dtype.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    extra_dims = like.dim() - 4
    if extra_dims < 0:
        raise ValueError(f"predictions must be (B, C, ..., H, W), got {tuple(like.shape)}")
    m = mask.reshape(mask.shape[0], *([1] * (1 + extra_dims)), *mask.shape[-2:])
    return m.to(device=like.device, dtype=like.dtype)


def cfg(u: torch.Tensor, c: torch.Tensor, cfg_scale: float | torch.Tensor) -> torch.Tensor:
    """Plain classifier-free guidance: ``u + w * (c - u)``."""
    return u + cfg_scale * (c - u)


def combine(
    u: torch.Tensor | None,
    s: torch.Tensor,
    g: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg_scale: float | torch.Tensor,
    identity_scale: float = 1.0,
    context_scale: float = 1.0,
) -> torch.Tensor:
    """Decoupled guidance.

    With an unconditional pass::

        out = u + w * ( a_id * M * (s - u) + a_ctx * (1 - M) * (g - u) )

    Without one (guidance-distilled models, or a host that skips ``u``)::

        out = g + a_id * M * (s - g)

    ``cfg_scale`` is unused without ``u``: a distilled model's guidance is inside its prediction.
    """
    m = broadcast_mask(mask, like=s)
    if u is None:
        # g + a_id * M * (s - g), as torch.lerp: exactly g at weight 0 and exactly s at weight 1.
        return torch.lerp(g, s, identity_scale * m)
    return u + cfg_scale * (identity_scale * m * (s - u) + context_scale * (1 - m) * (g - u))


def compose(u: torch.Tensor, parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """One stream's prediction from weighted ``AND`` parts: ``u + sum_k w_k (c_k - u)``.

    A single part of weight 1 is returned as is, so the common case stays bit-exact.
    """
    if len(parts) == 1 and weights[0] == 1.0:
        return parts[0]
    out = u.clone()
    for part, weight in zip(parts, weights, strict=True):
        out += weight * (part - u)
    return out
