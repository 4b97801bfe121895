"""AlwaysOn scripts and the runner that calls their hooks.

Own re-implementation; mirrors modules/scripts.py: Script, AlwaysVisible, the *Args classes and
ScriptRunner's hook loops (Forge dfdcbab6). Every hook's exception is reported and swallowed, as in
Forge. No UI: set ``args_from``/``args_to`` yourself or use ``harness.attach_scripts``.
"""

from __future__ import annotations

from typing import Any

from modules import errors

AlwaysVisible = object()


# mirrors modules/scripts.py: MaskBlendArgs (Forge dfdcbab6)
class MaskBlendArgs:
    def __init__(
        self,
        current_latent: Any,
        nmask: Any,
        init_latent: Any,
        mask: Any,
        blended_latent: Any,
        denoiser: Any = None,
        sigma: Any = None,
    ) -> None:
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    def __init__(self, samples: Any) -> None:
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image: Any, index: int = 0) -> None:
        self.image = image
        self.index = index


class PostprocessBatchListArgs:
    def __init__(self, images: list) -> None:
        self.images = images


# mirrors modules/scripts.py: Script (Forge dfdcbab6)
class Script:
    name: str | None = None
    section: str | None = None
    filename: str | None = None
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group: Any = None
    create_group = True
    infotext_fields: Any = None
    paste_field_names: Any = None
    api_info: Any = None
    on_before_component_elem_id: Any = None
    on_after_component_elem_id: Any = None
    setup_for_ui_only = False
    controls: Any = None
    sorting_priority = 0

    def title(self) -> str:
        raise NotImplementedError()

    def ui(self, is_img2img: bool) -> Any:
        pass

    def show(self, is_img2img: bool) -> Any:
        return True

    def run(self, p: Any, *args: Any) -> Any:
        pass

    def setup(self, p: Any, *args: Any) -> None:
        pass

    def before_process(self, p: Any, *args: Any) -> None:
        pass

    def process(self, p: Any, *args: Any) -> None:
        pass

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def after_extra_networks_activate(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, *args: Any, **kwargs: Any) -> None:
        pass

    def on_mask_blend(self, p: Any, mba: MaskBlendArgs, *args: Any) -> None:
        pass

    def post_sample(self, p: Any, ps: PostSampleArgs, *args: Any) -> None:
        pass

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None:
        pass

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        pass

    def before_hr(self, p: Any, *args: Any) -> None:
        pass

    def elem_id(self, item_id: str) -> str:
        title = "".join(c if c.isalnum() else "_" for c in self.title().lower())
        return f"script_{'img2img' if self.is_img2img else 'txt2img'}_{title}_{item_id}"


# mirrors modules/scripts.py: ScriptRunner's AlwaysOn hook loops (Forge dfdcbab6)
class ScriptRunner:
    def __init__(self, alwayson_scripts: list[Script] | None = None) -> None:
        self.scripts: list[Script] = list(alwayson_scripts or [])
        self.alwayson_scripts: list[Script] = list(alwayson_scripts or [])
        self.selectable_scripts: list[Script] = []

    def _each(self, method: str, p: Any, *head: Any, **kwargs: Any) -> None:
        """``script.<method>(p, *head, *its_args, **kwargs)`` for every AlwaysOn script, errors reported."""
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, method)(p, *head, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    def before_process(self, p: Any) -> None:
        self._each("before_process", p)

    def process(self, p: Any) -> None:
        self._each("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        self._each("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p: Any, **kwargs: Any) -> None:
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        self._each("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p: Any, **kwargs: Any) -> None:
        self._each("process_before_every_sampling", p, **kwargs)

    def postprocess(self, p: Any, processed: Any) -> None:
        self._each("postprocess", p, processed)

    def postprocess_batch(self, p: Any, images: Any, **kwargs: Any) -> None:
        self._each("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, **kwargs: Any) -> None:
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def post_sample(self, p: Any, ps: PostSampleArgs) -> None:
        self._each("post_sample", p, ps)

    def on_mask_blend(self, p: Any, mba: MaskBlendArgs) -> None:
        self._each("on_mask_blend", p, mba)

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image", p, pp)

    def before_hr(self, p: Any) -> None:
        self._each("before_hr", p)

    def setup_scrips(self, p: Any, *, is_ui: bool = True) -> None:
        self._each("setup", p)
