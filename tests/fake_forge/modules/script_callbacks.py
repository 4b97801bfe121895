"""Callback registry (the sampling-related part).

Own re-implementation; mirrors modules/script_callbacks.py (Forge dfdcbab6): the params classes,
``callback_map``, ``on_*`` registration, ``*_callback`` dispatch (exceptions are reported, never
raised), ``remove_current_script_callbacks`` and ``remove_callbacks_for_function``. Callback order is
registration order (no metadata/user sorting).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors


# mirrors modules/script_callbacks.py: CFGDenoiserParams (Forge dfdcbab6)
class CFGDenoiserParams:
    def __init__(
        self,
        x: Any,
        image_cond: Any,
        sigma: Any,
        sampling_step: int,
        total_sampling_steps: int,
        text_cond: Any,
        text_uncond: Any,
        denoiser: Any = None,
    ) -> None:
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


# mirrors modules/script_callbacks.py: CFGDenoisedParams (Forge dfdcbab6)
class CFGDenoisedParams:
    def __init__(self, x: Any, sampling_step: int, total_sampling_steps: int, inner_model: Any) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


# mirrors modules/script_callbacks.py: AfterCFGCallbackParams (Forge dfdcbab6)
class AfterCFGCallbackParams:
    def __init__(self, x: Any, sampling_step: int, total_sampling_steps: int) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


# mirrors modules/script_callbacks.py: ExtraNoiseParams (Forge dfdcbab6)
class ExtraNoiseParams:
    def __init__(self, noise: Any, x: Any, xi: Any) -> None:
        self.noise = noise
        self.x = x
        self.xi = xi


# mirrors modules/script_callbacks.py: ScriptCallback (Forge dfdcbab6)
@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


CATEGORIES = (
    "app_started",
    "model_loaded",
    "ui_tabs",
    "ui_train_tabs",
    "ui_settings",
    "before_image_saved",
    "image_saved",
    "extra_noise",
    "cfg_denoiser",
    "cfg_denoised",
    "cfg_after_cfg",
    "before_component",
    "after_component",
    "image_grid",
    "infotext_pasted",
    "script_unloaded",
    "before_ui",
    "on_reload",
    "list_optimizers",
    "list_unets",
    "before_token_counter",
)
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{name}": [] for name in CATEGORIES}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}


def _caller_filename() -> str:
    stack = [frame for frame in inspect.stack(0) if frame.filename != __file__]
    return stack[0].filename if stack else "unknown file"


# mirrors modules/script_callbacks.py: add_callback (Forge dfdcbab6)
def add_callback(
    callbacks: list, fun: Any, *, name: str | None = None, category: str = "unknown", filename: str | None = None
) -> None:
    filename = filename or _caller_filename()
    base = f"base/{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    unique, index = base, 0
    while any(cb.name == unique for cb in callbacks):
        index += 1
        unique = f"{base}-{index}"
    callbacks.append(ScriptCallback(filename, fun, unique))


# mirrors modules/script_callbacks.py: ordered_callbacks (Forge dfdcbab6) -- registration order
def ordered_callbacks(category: str, unordered_callbacks: list | None = None, *, enable_user_sort: bool = True) -> list:
    if unordered_callbacks is not None:
        return list(unordered_callbacks)
    return list(callback_map.get("callbacks_" + category, []))


# mirrors modules/script_callbacks.py: clear_callbacks (Forge dfdcbab6)
def clear_callbacks() -> None:
    for callbacks in callback_map.values():
        callbacks.clear()
    ordered_callbacks_map.clear()


def _dispatch(category: str, job: str, *args: Any) -> None:
    for c in ordered_callbacks(category):
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


# mirrors modules/script_callbacks.py: cfg_denoiser_callback etc. (Forge dfdcbab6)
def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _dispatch("cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _dispatch("cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _dispatch("cfg_after_cfg", "cfg_after_cfg_callback", params)


def extra_noise_callback(params: ExtraNoiseParams) -> None:
    _dispatch("extra_noise", "callbacks_extra_noise", params)


def model_loaded_callback(sd_model: Any) -> None:
    _dispatch("model_loaded", "model_loaded_callback", sd_model)


def ui_settings_callback() -> None:
    _dispatch("ui_settings", "ui_settings_callback")


def before_ui_callback() -> None:
    for c in reversed(ordered_callbacks("before_ui")):
        try:
            c.callback()
        except Exception:
            errors.report(f"Error executing callback before_ui for {c.script}", exc_info=True)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    _dispatch("infotext_pasted", "infotext_pasted", infotext, params)


def script_unloaded_callback() -> None:
    for c in reversed(ordered_callbacks("script_unloaded")):
        try:
            c.callback()
        except Exception:
            errors.report(f"Error executing callback script_unloaded for {c.script}", exc_info=True)


# mirrors modules/script_callbacks.py: remove_current_script_callbacks (Forge dfdcbab6)
def remove_current_script_callbacks() -> None:
    filename = _caller_filename()
    if filename == "unknown file":
        return
    for callbacks in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        callbacks[:] = [cb for cb in callbacks if cb.script != filename]


# mirrors modules/script_callbacks.py: remove_callbacks_for_function (Forge dfdcbab6)
def remove_callbacks_for_function(callback_func: Any) -> None:
    for callbacks in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        callbacks[:] = [cb for cb in callbacks if cb.callback != callback_func]


def _register(category: str, callback: Any, name: str | None) -> None:
    add_callback(
        callback_map[f"callbacks_{category}"], callback, name=name, category=category, filename=_caller_filename()
    )


# mirrors modules/script_callbacks.py: on_* registration (Forge dfdcbab6)
def on_app_started(callback: Any, *, name: str | None = None) -> None:
    _register("app_started", callback, name)


def on_before_reload(callback: Any, *, name: str | None = None) -> None:
    _register("on_reload", callback, name)


def on_model_loaded(callback: Any, *, name: str | None = None) -> None:
    _register("model_loaded", callback, name)


def on_ui_tabs(callback: Any, *, name: str | None = None) -> None:
    _register("ui_tabs", callback, name)


def on_ui_settings(callback: Any, *, name: str | None = None) -> None:
    _register("ui_settings", callback, name)


def on_before_image_saved(callback: Any, *, name: str | None = None) -> None:
    _register("before_image_saved", callback, name)


def on_image_saved(callback: Any, *, name: str | None = None) -> None:
    _register("image_saved", callback, name)


def on_extra_noise(callback: Any, *, name: str | None = None) -> None:
    _register("extra_noise", callback, name)


def on_cfg_denoiser(callback: Any, *, name: str | None = None) -> None:
    _register("cfg_denoiser", callback, name)


def on_cfg_denoised(callback: Any, *, name: str | None = None) -> None:
    """Registers, but Forge never fires cfg_denoised (nor does this fake)."""
    _register("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback: Any, *, name: str | None = None) -> None:
    _register("cfg_after_cfg", callback, name)


def on_before_component(callback: Any, *, name: str | None = None) -> None:
    _register("before_component", callback, name)


def on_after_component(callback: Any, *, name: str | None = None) -> None:
    _register("after_component", callback, name)


def on_infotext_pasted(callback: Any, *, name: str | None = None) -> None:
    _register("infotext_pasted", callback, name)


def on_script_unloaded(callback: Any, *, name: str | None = None) -> None:
    _register("script_unloaded", callback, name)


def on_before_ui(callback: Any, *, name: str | None = None) -> None:
    _register("before_ui", callback, name)


def on_list_unets(callback: Any, *, name: str | None = None) -> None:
    _register("list_unets", callback, name)


def on_before_token_counter(callback: Any, *, name: str | None = None) -> None:
    _register("before_token_counter", callback, name)
