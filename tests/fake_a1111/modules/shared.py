"""Fake of modules/shared.py (1.10.1): ``opts``, ``state`` and ``sd_model`` (set by the harness)."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

from tests.fake_total_progress import TotalTQDM

# Defaults of the options the fake host reads (modules/shared_options.py, 1.10.1).
OPTION_DEFAULTS: dict[str, Any] = {
    "batch_cond_uncond": True,
    "skip_early_cond": 0.0,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "use_old_scheduling": False,
    "live_preview_content": "Prompt",
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "persistent_cond_cache": True,
    "CLIP_stop_at_last_layers": 1,
    "sdxl_crop_left": 0,
    "sdxl_crop_top": 0,
    "fp8_storage": "Disable",
    "cache_fp16_weight": False,
    "hires_fix_use_firstpass_conds": False,
    "img2img_fix_steps": False,
    "img2img_extra_noise": 0.0,
    "sgm_noise_multiplier": False,
    "enable_quantization": False,
    "inpainting_mask_weight": 1.0,
    "refiner_switch_by_sample_steps": False,
    "sd_checkpoints_limit": 1,
    "hires_fix_refiner_pass": "second pass",
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "sd3_enable_t5": False,
    "multiple_tqdm": True,
}


class OptionInfo:
    """mirrors modules/options.py: OptionInfo (1.10.1) - the fields a settings page entry carries."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None) -> None:
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.infotext, self.category_id = onchange, section, infotext, category_id


class Options:
    """mirrors modules/options.py: Options (1.10.1) - attribute access only, plus ``data``."""

    def __init__(self) -> None:
        self.__dict__["data"] = dict(OPTION_DEFAULTS)
        self.__dict__["data_labels"] = {}

    def add_option(self, key: str, info: OptionInfo) -> None:
        """mirrors Options.add_option: register the entry; its default applies unless a value is set."""
        self.__dict__["data_labels"][key] = info
        self.__dict__["data"].setdefault(key, info.default)

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__["data"]
        if name in data:
            return data[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["data"][name] = value

    def get_default(self, name: str) -> Any:
        return OPTION_DEFAULTS.get(name)

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        self.data[key] = value
        return True

    def reset(self) -> None:
        """Fake only: back to the defaults above (the harness calls this in ``make_host``)."""
        self.data.clear()
        self.data.update(OPTION_DEFAULTS)


class State:
    """mirrors modules/shared_state.py: State (1.10.1), without jobs, previews and logging."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.skipped = False
        self.interrupted = False
        self.textinfo = None  # shown before the percentage in the UI's progress bar
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.processing_has_refined_job_count = False
        self.sampling_step = 0
        self.sampling_steps = 0
        self.current_latent = None

    def begin(self, job: str = "(unknown)") -> None:
        self.reset()
        self.job_count = -1
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def skip(self) -> None:
        self.skipped = True

    def interrupt(self) -> None:
        self.interrupted = True

    def stop_generating(self) -> None:
        self.stopping_generation = True

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0


opts = Options()
state = State()
cmd_opts = SimpleNamespace(disable_console_progressbars=False)
total_tqdm = TotalTQDM(sys.modules[__name__])
sd_model = None  # the harness's FakeSdModel (make_host)
device = "cpu"
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {"Latent": {"mode": "bilinear", "antialias": False}}
