"""Fake of modules/script_callbacks.py (1.10.1): the parameter objects, registration and calling.

Callbacks are kept in ``callback_map`` (lists of ``ScriptCallback``) exactly like the real module;
``ordered_callbacks_map`` caches the call order per category and, like the real one, is only
recomputed when the number of registered callbacks changes. No extension metadata sorting.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors, shared


def report_exception(c: ScriptCallback, job: str) -> None:
    """mirrors modules/script_callbacks.py: report_exception (1.10.1)."""
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


class CFGDenoiserParams:
    """mirrors modules/script_callbacks.py: CFGDenoiserParams (1.10.1), same fields and order."""

    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ) -> None:
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    """mirrors modules/script_callbacks.py: CFGDenoisedParams (1.10.1)."""

    def __init__(self, x, sampling_step, total_sampling_steps, inner_model) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    """mirrors modules/script_callbacks.py: AfterCFGCallbackParams (1.10.1)."""

    def __init__(self, x, sampling_step, total_sampling_steps) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


@dataclasses.dataclass
class ScriptCallback:
    """mirrors modules/script_callbacks.py: ScriptCallback (1.10.1)."""

    script: str
    callback: Any
    name: str = "unnamed"


def add_callback(callbacks: list, fun: Any, *, name: str | None = None, category: str = "unknown", filename=None):
    """mirrors modules/script_callbacks.py: add_callback (1.10.1); the extension part is always 'base'."""
    if filename is None:
        callers = [frame.filename for frame in inspect.stack() if frame.filename != __file__]
        filename = callers[0] if callers else "unknown file"

    base_name = f"base/{os.path.basename(filename)}/{category}"
    if name is not None:
        base_name += f"/{name}"

    unique = base_name
    taken = {c.name for c in callbacks}
    for index in range(1000):
        if unique not in taken:
            break
        unique = f"{base_name}-{index + 1}"

    callbacks.append(ScriptCallback(filename, fun, unique))


_CATEGORIES = (
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

# mirrors modules/script_callbacks.py: callback_map / ordered_callbacks_map (1.10.1)
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{category}": [] for category in _CATEGORIES}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}


def ordered_callbacks(category: str, unordered_callbacks=None, *, enable_user_sort: bool = True) -> list:
    """mirrors modules/script_callbacks.py: ordered_callbacks (1.10.1) - registration order, honouring
    ``opts.prioritized_callbacks_<category>``; cached until the number of callbacks changes."""
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])

    cached = ordered_callbacks_map.get(category)
    if enable_user_sort and cached is not None and len(cached) == len(unordered_callbacks):
        return cached

    result = list(unordered_callbacks)
    if enable_user_sort:
        for wanted in reversed(getattr(shared.opts, "prioritized_callbacks_" + category, [])):
            found = next((i for i, c in enumerate(result) if c.name == wanted), None)
            if found is not None:
                result.insert(0, result.pop(found))
        ordered_callbacks_map[category] = result
    return result


def enumerate_callbacks():
    """mirrors modules/script_callbacks.py: enumerate_callbacks (1.10.1)."""
    for key, callbacks in callback_map.items():
        yield key.removeprefix("callbacks_"), callbacks


def clear_callbacks() -> None:
    """mirrors modules/script_callbacks.py: clear_callbacks (1.10.1)."""
    for callbacks in callback_map.values():
        callbacks.clear()
    ordered_callbacks_map.clear()


def remove_callbacks_for_function(callback_func: Any) -> None:
    """mirrors modules/script_callbacks.py: remove_callbacks_for_function (1.10.1)."""
    for lists in (callback_map.values(), ordered_callbacks_map.values()):
        for callbacks in lists:
            for c in [c for c in callbacks if c.callback == callback_func]:
                callbacks.remove(c)


def remove_current_script_callbacks() -> None:
    """mirrors modules/script_callbacks.py: remove_current_script_callbacks (1.10.1)."""
    callers = [frame.filename for frame in inspect.stack() if frame.filename != __file__]
    if not callers:
        return
    for lists in (callback_map.values(), ordered_callbacks_map.values()):
        for callbacks in lists:
            for c in [c for c in callbacks if c.script == callers[0]]:
                callbacks.remove(c)


def _call_each(category: str, job: str, *args: Any, reverse: bool = False) -> None:
    callbacks = ordered_callbacks(category)
    for c in reversed(callbacks) if reverse else callbacks:  # the live list, as the real loops
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, job)


# -- callers (mirror the *_callback functions of the real module) ----------------------------------
def model_loaded_callback(sd_model: Any) -> None:
    _call_each("model_loaded", "model_loaded_callback", sd_model)


def ui_settings_callback() -> None:
    _call_each("ui_settings", "ui_settings_callback")


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _call_each("cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _call_each("cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _call_each("cfg_after_cfg", "cfg_after_cfg_callback", params)


def infotext_pasted_callback(infotext: str, params: dict) -> None:
    _call_each("infotext_pasted", "infotext_pasted", infotext, params)


def script_unloaded_callback() -> None:
    _call_each("script_unloaded", "script_unloaded", reverse=True)


def before_ui_callback() -> None:
    _call_each("before_ui", "before_ui", reverse=True)


# -- registration (mirror the on_* functions of the real module) -----------------------------------
def on_model_loaded(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_settings(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_cfg_denoiser(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_cfg_denoiser"], callback, name=name, category="cfg_denoiser")


def on_cfg_denoised(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_cfg_denoised"], callback, name=name, category="cfg_denoised")


def on_cfg_after_cfg(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_cfg_after_cfg"], callback, name=name, category="cfg_after_cfg")


def on_infotext_pasted(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")


def on_script_unloaded(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback: Any, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")
