"""Sampler registry. Own re-implementation; mirrors modules/sd_samplers.py: all_samplers,
find_sampler_config, create_sampler (Forge dfdcbab6). The fake offers Euler (the default, first)
and Heun (second order: total_steps doubles), and the timestep samplers DDIM, DDIM CFG++ and PLMS."""

from __future__ import annotations

from typing import Any

from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers: list[sd_samplers_common.SamplerData] = [
    *sd_samplers_kdiffusion.samplers_data_k_diffusion,
    *sd_samplers_timesteps.samplers_data_timesteps,
]
all_samplers_map = {x.name: x for x in all_samplers}


# mirrors modules/sd_samplers.py: find_sampler_config (Forge dfdcbab6)
def find_sampler_config(name: str | None) -> sd_samplers_common.SamplerData | None:
    if name is not None:
        return all_samplers_map.get(name, None)
    return all_samplers[0]


# mirrors modules/sd_samplers.py: create_sampler (Forge dfdcbab6)
def create_sampler(name: str | None, model: Any) -> sd_samplers_common.Sampler:
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
