"""Fake of modules/scripts.py (1.10.1): ``Script`` base class, ``AlwaysVisible``, the hook argument
objects and a ``ScriptRunner`` that calls alwayson scripts' hooks in list order, each inside
try/except with ``errors.report`` (a script's error never aborts generation). No UI, no loading."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from modules import errors

AlwaysVisible = object()


class MaskBlendArgs:
    """mirrors modules/scripts.py: MaskBlendArgs (1.10.1)."""

    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None) -> None:
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    """mirrors modules/scripts.py: PostSampleArgs (1.10.1)."""

    def __init__(self, samples) -> None:
        self.samples = samples


class Script:
    """mirrors modules/scripts.py: Script (1.10.1) - hook methods are no-ops taking ``(p, *args)``."""

    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False

    def title(self) -> str:
        raise NotImplementedError()

    def ui(self, is_img2img: bool) -> Any:
        pass

    def show(self, is_img2img: bool) -> Any:
        return True

    def elem_id(self, item_id: str) -> str:
        """mirrors Script.elem_id (1.10.1): ``script_<tab>_<title>_<item_id>`` (lower case, ``_`` joined)."""
        tab = "img2img" if self.is_img2img else "txt2img"
        title = "".join(c if c.isalnum() else "_" for c in self.title().lower())
        return f"script_{tab}_{title}_{item_id}"

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba, *args):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass


class ScriptRunner:
    """mirrors modules/scripts.py: ScriptRunner (1.10.1), alwayson hooks only, in list order.

    A script is any object with the hook methods it wants; ``args_from``/``args_to`` select its slice
    of ``p.script_args`` (missing = all of them)."""

    def __init__(self, scripts: list | None = None) -> None:
        self.alwayson_scripts: list = list(scripts or [])
        self.scripts = self.alwayson_scripts
        self.selectable_scripts: list = []

    def ordered_scripts(self, method_name: str) -> list:
        return [s for s in self.alwayson_scripts if callable(getattr(s, method_name, None))]

    def _run(self, method_name: str, p: Any, *before: Any, **kwargs: Any) -> None:
        """Calls ``script.<method>(p, *before, *script_args, **kwargs)`` for each script."""
        for script in self.ordered_scripts(method_name):
            if method_name == "setup" and not kwargs.get("is_ui", True) and getattr(script, "setup_for_ui_only", False):
                continue
            try:
                args = (p.script_args or [])[getattr(script, "args_from", None) : getattr(script, "args_to", None)]
                hook_kwargs = {} if method_name == "setup" else kwargs
                getattr(script, method_name)(p, *before, *args, **hook_kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {getattr(script, 'filename', script)}", exc_info=True)

    def setup_scrips(self, p, *, is_ui=True):
        self._run("setup", p, is_ui=is_ui)

    def before_process(self, p):
        self._run("before_process", p)

    def process(self, p):
        self._run("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._run("process_before_every_sampling", p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._run("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._run("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run("process_batch", p, **kwargs)

    def postprocess(self, p, processed):
        self._run("postprocess", p, processed)  # script.postprocess(p, processed, *args)

    def postprocess_batch(self, p, images, **kwargs):
        self._run("postprocess_batch", p, images=images, **kwargs)

    def post_sample(self, p, ps):
        self._run("post_sample", p, ps)  # script.post_sample(p, ps, *args)

    def on_mask_blend(self, p, mba):
        self._run("on_mask_blend", p, mba)  # script.on_mask_blend(p, mba, *args)

    def before_hr(self, p):
        self._run("before_hr", p)


# mirrors modules/scripts.py: scripts_data / ScriptClassData (1.10.1) - what extensions scan to find
# another script's module (the X/Y/Z plot's xyz_grid.py).
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []
