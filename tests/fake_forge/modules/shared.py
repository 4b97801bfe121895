"""Global state of the fake host: ``opts``, ``state``, ``sd_model``.

Minimal stand-in for modules/shared.py + modules/shared_state.py + modules/options.py (Forge dfdcbab6).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import torch

from tests.fake_total_progress import TotalTQDM

# mirrors the defaults of modules/shared_options.py (Forge dfdcbab6) for the options the fake reads
OPTION_DEFAULTS: dict[str, Any] = {
    "skip_early_cond": 0.0,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "eta_noise_seed_delta": 0,
    "CLIP_stop_at_last_layers": 1,
    "use_old_scheduling": False,
    "persistent_cond_cache": True,
    "emphasis": "Original",
    "sd3_enable_t5": False,
    "sdxl_crop_left": 0,
    "sdxl_crop_top": 0,
    "fp8_storage": "Disable",
    "cache_fp16_weight": False,
    "img2img_fix_steps": False,
    "img2img_extra_noise": 0.0,
    "always_discard_next_to_last_sigma": False,
    "hires_fix_use_firstpass_conds": False,
    "hires_fix_refiner_pass": "second pass",
    "inpainting_mask_weight": 1.0,
    "token_merging_ratio": 0.0,
    "multiple_tqdm": True,
    "token_merging_ratio_hr": 0.0,
    "sgm_noise_multiplier": False,
    "sd_noise_schedule": "Default",
    "enable_pnginfo": True,
    "initial_noise_multiplier": 1.0,
}


# mirrors modules/options.py: OptionInfo (Forge dfdcbab6)
class OptionInfo:
    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Any = None,
        section: Any = None,
        **kwargs: Any,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section

    def info(self, info: str) -> OptionInfo:
        return self

    def needs_reload_ui(self) -> OptionInfo:
        return self

    def needs_restart(self) -> OptionInfo:
        return self


# mirrors modules/options.py: Options (Forge dfdcbab6) -- values in .data, defaults in .data_labels
class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {k: OptionInfo(v) for k, v in OPTION_DEFAULTS.items()})

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "data")
        if name in data:
            return data[name]
        labels = object.__getattribute__(self, "data_labels")
        if name in labels:
            return labels[name].default
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.data[name] = value

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def get_default(self, key: str) -> Any:
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def reset(self) -> None:
        self.data.clear()
        object.__setattr__(self, "data_labels", {k: OptionInfo(v) for k, v in OPTION_DEFAULTS.items()})


# mirrors modules/shared_state.py: State (Forge dfdcbab6), the fields the samplers use
class State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.interrupted = False
        self.textinfo = None  # shown before the percentage in the UI's progress bar
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.processing_has_refined_job_count = False
        self.sampling_step = 0
        self.sampling_steps = 0
        self.current_latent = None

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job: str = "(unknown)") -> None:
        self.reset()
        self.job = job

    def end(self) -> None:
        self.job = ""


class _PromptStyles:
    def apply_styles_to_prompt(self, prompt: str, styles: list) -> str:
        return prompt

    def apply_negative_styles_to_prompt(self, prompt: str, styles: list) -> str:
        return prompt


opts = Options()
state = State()
sd_model: Any = None
device = torch.device("cpu")
cmd_opts = SimpleNamespace(embeddings_dir="", no_prompt_history=True, always_cpu=True,
                           disable_console_progressbars=False)
prompt_styles = _PromptStyles()
total_tqdm = TotalTQDM(sys.modules[__name__])
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
}
sd_upscalers: list = []
