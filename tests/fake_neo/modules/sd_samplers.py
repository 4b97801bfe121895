"""Sampler registry: the simulated Forge's (Euler, Heun) plus Forge Neo's "Euler CFG++".

Own re-implementation; mirrors modules/sd_samplers.py: all_samplers, find_sampler_config,
create_sampler (Forge dfdcbab6); the CFG++ entry wraps modules/sd_samplers_cfgpp.py (Forge Neo 251d2045).
"""

from __future__ import annotations

from backend import _forge
from modules import sd_samplers_cfgpp, sd_samplers_common, sd_samplers_kdiffusion

_FORGE = _forge.load("modules/sd_samplers.py")
_CFGPP = sd_samplers_common.SamplerData(
    "Euler CFG++",
    lambda model: sd_samplers_kdiffusion.KDiffusionSampler(sd_samplers_cfgpp.sample_euler_cfg_pp, model),
    ["euler_cfg_pp"],
    {},
)
if _CFGPP.name not in _FORGE.all_samplers_map:
    _FORGE.all_samplers.append(_CFGPP)
    _FORGE.all_samplers_map[_CFGPP.name] = _CFGPP
all_samplers = _FORGE.all_samplers
all_samplers_map = _FORGE.all_samplers_map
find_sampler_config = _FORGE.find_sampler_config
create_sampler = _FORGE.create_sampler
