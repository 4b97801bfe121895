"""SVDQ (Nunchaku) quantised Flux as in Forge Neo: a wrapper around Nunchaku's own transformer.

Own re-implementation; mirrors backend/nn/svdq.py (Forge Neo, index id 24420122928): ``NunchakuModelMixin``
and the Flux wrapper's ``forward(x, timestep, context, y, guidance, control=None,
transformer_options={}, **kwargs)``. Nunchaku's fused 4-bit kernels are replaced by
tests/fake_neo/tiny_dit.py (its own attention: nothing DeGu can read, as with the real kernels); the
pooled vector and the distilled guidance are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


# mirrors backend/nn/svdq.py: NunchakuModelMixin (Forge Neo)
class NunchakuModelMixin(nn.Module):
    offload: bool = False


# mirrors backend/nn/svdq.py: SVDQFluxTransformer2DModel (Forge Neo), its forward signature
class SVDQFluxTransformer2DModel(NunchakuModelMixin):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.model(x, timestep, context)
