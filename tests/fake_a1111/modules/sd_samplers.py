"""Fake of modules/sd_samplers.py (1.10.1): sampler lookup and creation (Euler, LCM, DDIM, DDIM CFG++, PLMS)."""

from __future__ import annotations

from typing import Any

from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers
samplers_map = {alias.lower(): x.name for x in all_samplers for alias in [x.name, *x.aliases]}


def find_sampler_config(name: str | None) -> sd_samplers_common.SamplerData | None:
    """mirrors modules/sd_samplers.py: find_sampler_config (1.10.1); ``None`` -> the first sampler."""
    if name is not None:
        return all_samplers_map.get(name, None)
    return all_samplers[0]


def create_sampler(name: str, model: Any) -> sd_samplers_common.Sampler:
    """mirrors modules/sd_samplers.py: create_sampler (1.10.1)."""
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
