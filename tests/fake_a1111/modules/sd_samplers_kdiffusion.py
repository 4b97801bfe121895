"""Fake of modules/sd_samplers_kdiffusion.py (1.10.1) with the bits of k-diffusion it needs:
the 'Euler' and 'LCM' samplers, with the default (uniform-timestep, Karras-free) sigma schedule."""

from __future__ import annotations

from typing import Any

import modules.shared as shared
import torch
from modules import sd_samplers_cfg_denoiser, sd_samplers_common
from modules.sd_samplers_cfg_denoiser import CFGDenoiser  # noqa: F401  (re-exported like the real module)
from modules.shared import opts


class CompVisDenoiser(torch.nn.Module):
    """mirrors k_diffusion/external.py: CompVisDenoiser (DiscreteEpsDDPMDenoiser + DiscreteSchedule),
    loosely: ``forward(x, sigma, **kwargs)`` returns the denoised x0 = x - sigma * eps, where
    eps = ``model.apply_model(x / sqrt(sigma^2 + 1), t(sigma), **kwargs)``."""

    def __init__(self, model: Any, quantize: bool = False) -> None:
        super().__init__()
        self.inner_model = model
        alphas_cumprod = model.alphas_cumprod.to(torch.float32)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize
        self.sigma_data = 1.0

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Fractional timestep by linear interpolation in log-sigma (nearest index if quantizing)."""
        log_sigma = sigma.to(self.log_sigmas.dtype).log()
        if self.quantize if quantize is None else quantize:
            return (log_sigma.reshape(-1, 1) - self.log_sigmas).abs().argmin(dim=1).view(sigma.shape)
        high = torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1)).clamp(1, len(self.log_sigmas) - 1)
        low = high - 1
        w = ((log_sigma.reshape(-1) - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])).clamp(
            0, 1
        )
        return (low + w).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """``n`` sigmas uniform in timestep from the largest to the smallest, then a final 0."""
        if n is None:
            sigmas = self.sigmas.flip(0)
        else:
            sigmas = self.t_to_sigma(torch.linspace(len(self.sigmas) - 1, 0, n))
        return torch.cat([sigmas, sigmas.new_zeros([1])])

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -sigma, 1 / (sigma**2 + self.sigma_data**2) ** 0.5

    def get_eps(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(*args, **kwargs)

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        c_out, c_in = (s.reshape(-1, *[1] * (input.ndim - 1)) for s in self.get_scalings(sigma))
        eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return input + eps * c_out


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """mirrors k_diffusion/sampling.py: sample_euler (without churn: deterministic)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma * s_in, **extra_args)
        d = (x - denoised) / sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma, "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigma)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """mirrors k_diffusion/sampling.py: sample_lcm - jump to the denoised x0, re-noise to the next
    sigma. The noise comes from the image RNG ``p.rng`` as the host's TorchHijack routes k-diffusion's
    ``randn_like`` (sd_samplers_common.py, 1.10.1); without one, from a fixed-seed generator."""
    extra_args = {} if extra_args is None else extra_args
    generator = torch.Generator().manual_seed(1234)
    rng = getattr(getattr(model, "p", None), "rng", None)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            noise = rng.next() if rng is not None else torch.randn(x.shape, generator=generator)
            x = x + sigmas[i + 1] * noise.to(x)
    return x


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    """mirrors modules/sd_samplers_kdiffusion.py: CFGDenoiserKDiffusion (1.10.1): ``inner_model`` is
    ``shared.sd_model.create_denoiser()`` if present, else a CompVisDenoiser of ``shared.sd_model``;
    it returns the denoised x0."""

    @property
    def inner_model(self):
        if self.model_wrap is None:
            constructor = getattr(shared.sd_model, "create_denoiser", None)
            if constructor is not None:
                self.model_wrap = constructor()
            else:
                self.model_wrap = CompVisDenoiser(shared.sd_model, quantize=opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    """mirrors modules/sd_samplers_kdiffusion.py: KDiffusionSampler (1.10.1) for sample_euler and sample_lcm.

    A new instance (and so a new ``model_wrap_cfg`` CFGDenoiser) per sampling pass."""

    def __init__(self, funcname: Any, sd_model: Any, options: dict | None = None) -> None:
        super().__init__(funcname)
        self.options = options or {}
        self.func = funcname if callable(funcname) else globals()[funcname]
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        """The 'Automatic' scheduler of Euler: the model's own uniform-timestep schedule."""
        return self.model_wrap.get_sigmas(steps).cpu()

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        """mirrors KDiffusionSampler.sample (1.10.1): x (unit noise) * sigmas[0], then the loop."""
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]

        self.initialize(p)
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        samples = self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                sigmas,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
            ),
        )
        self.add_infotext(p)
        return samples

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        """mirrors KDiffusionSampler.sample_img2img (1.10.1): the tail of a longer schedule, starting
        from ``x + noise * sigma_sched[0]``."""
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        xi = x + noise * sigma_sched[0]

        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        samples = self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                sigma_sched,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
            ),
        )
        self.add_infotext(p)
        return samples


samplers_k_diffusion = [
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("LCM", "sample_lcm", ["k_lcm"], {}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_k_diffusion
]
