"""Noise schedules / parameterisations (eps for SD1.5, const-flow for Flux).

Own re-implementation; mirrors backend/modules/k_prediction.py (Forge dfdcbab6): AbstractPrediction,
Prediction (eps, "linear" = scaled-linear betas), PredictionFlux, k_prediction_from_diffusers_scheduler.
"""

from __future__ import annotations

import math
from typing import Any

import torch


# mirrors backend/modules/k_prediction.py: AbstractPrediction (Forge dfdcbab6)
class AbstractPrediction(torch.nn.Module):
    def __init__(self, sigma_data: float = 1.0, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.prediction_type = prediction_type

    @staticmethod
    def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return sigma.view(sigma.shape[:1] + (1,) * (like.ndim - 1))

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "const":
            return noise
        return noise / (self._expand(sigma, noise) ** 2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        s = self._expand(sigma, model_output)
        if self.prediction_type == "v_prediction":
            d = s**2 + self.sigma_data**2
            return model_input * self.sigma_data**2 / d - model_output * s * self.sigma_data / d**0.5
        return model_input - model_output * s  # eps and const (flow) alike

    def noise_scaling(
        self, sigma: Any, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        if self.prediction_type == "const":
            return sigma * noise + (1.0 - sigma) * latent_image
        scale = torch.sqrt(1.0 + sigma**2.0) if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma: Any, latent: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "const":
            return latent / (1.0 - sigma)
        return latent


# mirrors backend/modules/k_prediction.py: Prediction (Forge dfdcbab6)
class Prediction(AbstractPrediction):
    def __init__(
        self,
        sigma_data: float = 1.0,
        prediction_type: str = "eps",
        beta_schedule: str = "linear",
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
    ) -> None:
        super().__init__(sigma_data=sigma_data, prediction_type=prediction_type)
        if beta_schedule != "linear":
            raise NotImplementedError(beta_schedule)
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        distance = (sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]).abs()
        return distance.argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.float().to(self.log_sigmas.device).clamp(0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        frac = t.frac()
        return ((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


# mirrors backend/modules/k_prediction.py: PredictionDiscreteFlow (Forge dfdcbab6), used by SD3.5
class PredictionDiscreteFlow(AbstractPrediction):
    def __init__(
        self, sigma_data: float = 1.0, prediction_type: str = "const", shift: float = 1.0, timesteps: int = 1000
    ) -> None:
        super().__init__(sigma_data=sigma_data, prediction_type=prediction_type)
        self.shift = shift
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1, 1)))

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * 1000

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = timestep / 1000.0
        if self.shift == 1.0:
            return timestep
        return self.shift * timestep / (1 + (self.shift - 1) * timestep)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return 1.0 - percent


def _flux_time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


# mirrors backend/modules/k_prediction.py: PredictionFlux (Forge dfdcbab6)
class PredictionFlux(AbstractPrediction):
    def __init__(
        self,
        seq_len: int = 4096,
        base_seq_len: int = 256,
        max_seq_len: int = 4096,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        pseudo_timestep_range: int = 10000,
        mu: float | None = None,
    ) -> None:
        super().__init__(sigma_data=1.0, prediction_type="const")
        self.pseudo_timestep_range = pseudo_timestep_range
        if mu is None:  # diffusers' calculate_shift: a line through (base_seq_len, base_shift), (max, max_shift)
            slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
            mu = seq_len * slope + (base_shift - slope * base_seq_len)
        self.mu = mu
        t = torch.arange(1, pseudo_timestep_range + 1, 1) / pseudo_timestep_range
        self.register_buffer("sigmas", _flux_time_shift(mu, t))

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return timestep

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return 1.0 - percent


# mirrors backend/modules/k_prediction.py: k_prediction_from_diffusers_scheduler (Forge dfdcbab6)
def k_prediction_from_diffusers_scheduler(scheduler: Any) -> Prediction:
    config = scheduler.config
    if (
        getattr(config, "prediction_type", None) in ("epsilon", "v_prediction")
        and config.beta_schedule == "scaled_linear"
    ):
        return Prediction(
            sigma_data=1.0,
            prediction_type=config.prediction_type,
            beta_schedule="linear",
            linear_start=config.beta_start,
            linear_end=config.beta_end,
            timesteps=config.num_train_timesteps,
        )
    raise NotImplementedError(f"Failed to recognize {scheduler}")
