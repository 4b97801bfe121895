"""Fake of modules/ui_components.py (1.10.1): only ``InputAccordion``, the one component DeGu uses.

mirrors modules/ui_components.py: InputAccordion of AUTOMATIC1111 1.10.1 (and Forge's
InputAccordionImpl): a hidden ``gr.Checkbox`` (elem_id ``<id>-checkbox``) that is the script's input
value, plus a ``gr.Accordion`` (elem_id ``<id>``, class ``input-accordion``) entered by ``with``.
The page's javascript (javascript/inputAccordion.js in the WebUI; tests/assets/webui_shim.js here)
links the two: opening the accordion checks the checkbox, and the checkbox's change event calls
``inputAccordionChecked(id, checked)`` to open/close the accordion.

Works with gradio 3.41 (A1111: ``_js=``) and gradio 4 (Forge: ``js=``). Under gradio 4, defining a
``Component`` subclass makes gradio write a ``.pyi`` stub next to the source file; that is suppressed
while the class is created (Forge does the same with ``webui_do_not_create_gradio_pyi_thank_you``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import gradio as gr

GRADIO_4 = int(gr.__version__.split(".")[0]) >= 4
JS_KEYWORD = "js" if GRADIO_4 else "_js"


@contextlib.contextmanager
def _no_pyi_stub() -> Iterator[None]:
    try:
        import gradio.component_meta as component_meta
    except ImportError:  # gradio 3 writes no stubs
        yield
        return
    original = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        component_meta.create_or_modify_pyi = original


with _no_pyi_stub():

    class InputAccordion(gr.Checkbox):
        """An accordion usable as an input: its value is True when open (see the module docstring)."""

        global_index = 0

        # gradio 4 builds a component's config from its __init__ signature: expose gr.Checkbox's (as Forge does).
        @functools.wraps(gr.Checkbox.__init__)
        def __init__(self, value: Any = None, **kwargs: Any) -> None:
            self.accordion_id = kwargs.get("elem_id")
            if self.accordion_id is None:
                self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
                InputAccordion.global_index += 1

            super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
            script = f'function(checked){{ inputAccordionChecked("{self.accordion_id}", checked); }}'
            self.change(fn=None, inputs=[self], **{JS_KEYWORD: script})

            self.accordion = gr.Accordion(
                **{
                    **kwargs,
                    "elem_id": self.accordion_id,
                    "label": kwargs.get("label", "Accordion"),
                    "elem_classes": ["input-accordion"],
                    "open": value,
                }
            )

        def extra(self) -> Any:
            """A column shown inside the accordion's label row."""
            return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

        def __enter__(self) -> InputAccordion:
            self.accordion.__enter__()
            return self

        def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
            self.accordion.__exit__(exc_type, exc_val, exc_tb)

        def get_block_name(self) -> str:
            return "checkbox"
