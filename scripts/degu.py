"""DeGu — Decoupled Guidance: the AlwaysOn script for AUTOMATIC1111 1.10 and Forge.

UI, infotext, paste and X/Y/Z axes are all generated from ``DeGuSettings`` (lib_degu/settings.py),
so they cannot drift apart. The host adapter is chosen by capability, never by version string.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr
from modules import script_callbacks, scripts

from lib_degu.hosts import detect_host
from lib_degu.settings import DeGuSettings

HOST = detect_host()
TITLE = "DeGu"
XYZ_PREFIX = "[DeGu] "
ADVANCED = ("threshold", "softness", "blur", "ema", "start", "end", "context_refresh", "snap")
PLACEHOLDERS = {"subject": "e.g. sks, ohwx man, my-embedding", "generic": "e.g. a  (empty: remove the subject word)"}
BALANCE_ENDS = (
    '<div class="degu-balance-ends"><span>&larr; -1: editability (the scene you asked for)</span>'
    "<span>+1: fidelity (your subject) &rarr;</span></div>"
)

if HOST == "forge":
    from lib_degu.hosts import forge as adapter

    adapter.register_callbacks()
elif HOST == "a1111":
    from lib_degu.hosts import a1111 as adapter

    adapter.register_callbacks()
else:
    adapter = None


def _component(name: str, default: Any, elem_id: str) -> Any:
    spec = DeGuSettings.spec(name)
    if spec.choices is not None:
        return gr.Radio(label=spec.label, choices=list(spec.choices), value=default, elem_id=elem_id)
    if spec.minimum is not None:
        return gr.Slider(
            label=spec.label, minimum=spec.minimum, maximum=spec.maximum, step=spec.step, value=default, elem_id=elem_id
        )
    if isinstance(default, bool):
        return gr.Checkbox(label=spec.label, value=default, elem_id=elem_id)
    return gr.Textbox(label=spec.label, value=default, lines=1, elem_id=elem_id, placeholder=PLACEHOLDERS.get(name))


class DeGuScript(scripts.Script):
    sorting_priority = 15

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from modules.ui_components import InputAccordion

        components: dict[str, Any] = {}
        with InputAccordion(False, label="DeGu — Decoupled Guidance", elem_id=self.elem_id("enabled")) as enabled:
            components["enabled"] = enabled
            with gr.Row():
                for name in ("subject", "generic"):
                    components[name] = _component(name, _ui_default(name), self.elem_id(name))
            for name in ("identity_scale", "context_scale", "balance", "mask_source", "layout_pass"):
                components[name] = _component(name, _ui_default(name), self.elem_id(name))
                if name == "balance":
                    gr.HTML(BALANCE_ENDS, elem_id=self.elem_id("balance_ends"))
            with gr.Accordion("Advanced", open=False):
                for name in ADVANCED:
                    components[name] = _component(name, _ui_default(name), self.elem_id(name))
            components["show_mask"] = _component("show_mask", _ui_default("show_mask"), self.elem_id("show_mask"))

        ordered = [components[name] for name in DeGuSettings.names()]
        self.infotext_fields = [
            (components[name], _paste_reader(name)) for name in DeGuSettings.names() if name != "show_mask"
        ]
        self.paste_field_names = [
            DeGuSettings.spec(name).infotext for name in DeGuSettings.names() if DeGuSettings.spec(name).infotext
        ]
        return ordered

    # -- generation ------------------------------------------------------------------------------
    def process(self, p: Any, *args: Any) -> None:
        p._degu = None
        settings = self._settings(p, args)
        if settings is None or not settings.enabled:
            return
        p.extra_generation_params.update(settings.to_infotext())
        if adapter is None:
            message = f"DeGu: this WebUI ({HOST}) is not supported yet; the image is made without DeGu."
            print(f"[DeGu] {message}")
            if hasattr(p, "comment"):
                p.comment(message)
            return
        p._degu = adapter.start_generation(p, settings)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        generation = getattr(p, "_degu", None)
        if generation is None or adapter is None:
            return
        try:
            adapter.prepare_pass(p, generation)
        except Exception as error:  # the image is made without DeGu, and the user is told
            adapter.undo_pass(p)
            generation.note(p, f"DeGu: could not prepare this pass ({error!r}); made without DeGu.")

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        # Runs before the host writes this batch's infotexts: the mask that ran reaches the PNG text.
        generation = getattr(p, "_degu", None)
        if generation is not None:
            _record_sources(p, generation.sources_so_far())

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        generation = getattr(p, "_degu", None)
        p._degu = None
        if generation is None:
            return
        generation.finish(p)
        _record_sources(p, generation.sources)
        if generation.settings.show_mask:
            try:
                add_mask_previews(p, processed, generation)
            except Exception as error:  # a preview must never cost the user the generation
                print(f"[DeGu] could not draw the mask preview: {error!r}")

    def _settings(self, p: Any, args: tuple[Any, ...]) -> DeGuSettings | None:
        """UI/API args, then per-cell X/Y/Z overrides set on ``p`` as ``degu_<field>``."""
        try:
            settings = DeGuSettings.from_args(args)
            names = [name for name in DeGuSettings.names() if hasattr(p, f"degu_{name}")]
            overrides = {name: getattr(p, f"degu_{name}") for name in names}
            return settings.replace(**overrides) if overrides else settings
        except ValueError as error:
            print(f"[DeGu] {error}; the image is made without DeGu.")
            if hasattr(p, "comment"):
                p.comment(f"{error}; made without DeGu.")
            return None


def _record_sources(p: Any, sources: set[str]) -> None:
    if sources:
        p.extra_generation_params["DeGu mask used"] = ", ".join(sorted(sources))


def add_mask_previews(p: Any, processed: Any, generation: Any) -> None:
    """Append, per guided image, its final mask as a heat map over the image to the gallery.

    Previews are only appended to ``processed.images`` (shown in the gallery, returned by the API
    only because the user asked for them with show_mask); they are never saved to disk.
    """
    import numpy
    import torch
    from PIL import Image, ImageDraw

    from lib_degu.preview import heat_overlay

    first = getattr(processed, "index_of_first_image", 0)
    batch = getattr(p, "batch_size", 1)
    for iteration, image, mask, share in generation.previews():
        index = first + iteration * batch + image
        if index >= len(processed.images) or not isinstance(processed.images[index], Image.Image):
            continue
        source = processed.images[index].convert("RGB")
        pixels = torch.from_numpy(numpy.asarray(source).copy())
        overlay = Image.fromarray(heat_overlay(pixels, mask).numpy())
        caption = "DeGu mask" + (f", subject attention {share:.1%}" if share is not None else "")
        ImageDraw.Draw(overlay).text((2, 2), caption, fill=(255, 255, 255))
        processed.images.append(overlay)
        if hasattr(processed, "infotexts") and index < len(processed.infotexts):
            processed.infotexts.append(f"{caption}\n{processed.infotexts[index]}")


def _paste_reader(name: str) -> Any:
    """Infotext -> control value; a missing DeGu key restores the defaults (disabled)."""

    def read(params: dict[str, Any]) -> Any:
        try:
            return getattr(DeGuSettings.from_infotext(params), name)
        except ValueError:
            return getattr(DeGuSettings(), name)

    return read


# -- X/Y/Z plot axes --------------------------------------------------------------------------------
def _xyz_module() -> Any:
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            return data.module
    return None


def register_xyz_axes() -> None:
    xyz = _xyz_module()
    if xyz is None or any(getattr(axis, "label", "").startswith(XYZ_PREFIX) for axis in xyz.axis_options):
        return
    axes = []
    for f in dataclasses.fields(DeGuSettings):
        spec = DeGuSettings.spec(f.name)
        label = XYZ_PREFIX + spec.label
        if f.name in ("subject", "generic"):
            axes.append(xyz.AxisOption(label, str, xyz.apply_field(f"degu_{f.name}")))
        elif spec.choices is not None:
            axes.append(
                xyz.AxisOption(label, str, xyz.apply_field(f"degu_{f.name}"), choices=lambda c=spec.choices: list(c))
            )
        elif spec.minimum is not None:
            axes.append(
                xyz.AxisOption(
                    label,
                    int if f.type == "int" else float,
                    xyz.apply_field(f"degu_{f.name}"),
                    confirm=xyz.confirm_range(spec.minimum, spec.maximum, label),
                )
            )
        elif f.type == "bool" and spec.infotext is not None:  # enabled, layout_pass (show_mask is per view)
            axes.append(
                xyz.AxisOption(label, str, _apply_bool(f"degu_{f.name}"), choices=xyz.boolean_choice(reverse=True))
            )
    xyz.axis_options.extend(axes)


def _apply_bool(attribute: str) -> Any:
    def apply(p: Any, value: str, values: Any) -> None:
        setattr(p, attribute, str(value).lower() == "true")

    return apply


def on_ui_settings() -> None:
    """Settings page section: the defaults the accordion starts with."""
    from modules import shared

    section = ("degu", "DeGu")
    for name in ("identity_scale", "context_scale", "mask_source", "layout_pass", "show_mask", "context_refresh"):
        spec = DeGuSettings.spec(name)
        default = getattr(DeGuSettings(), name)
        if spec.choices is not None:
            info = shared.OptionInfo(default, spec.label, gr.Radio, {"choices": list(spec.choices)}, section=section)
        elif spec.minimum is not None:
            args = {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
            info = shared.OptionInfo(default, spec.label, gr.Slider, args, section=section)
        else:
            info = shared.OptionInfo(default, spec.label, gr.Checkbox, section=section)
        shared.opts.add_option(f"degu_default_{name}", info)


def _ui_default(name: str) -> Any:
    """The accordion's starting value: the user's setting if the settings page has one."""
    try:
        from modules import shared

        value = getattr(shared.opts, f"degu_default_{name}", None)
        if value is not None:
            DeGuSettings.from_dict({name: value})  # only a valid value becomes the default
            return value
    except Exception:
        pass
    return getattr(DeGuSettings(), name)


script_callbacks.on_before_ui(register_xyz_axes)
script_callbacks.on_ui_settings(on_ui_settings)
