"""Run by the WebUI at start-up. DeGu needs only what both WebUIs already ship (torch, gradio,
numpy), so this installs nothing and never touches the network; it only says what is missing."""

import importlib.util

_missing = [name for name in ("torch", "gradio", "numpy") if importlib.util.find_spec(name) is None]
if _missing:
    print(f"[DeGu] missing packages the WebUI normally provides: {', '.join(_missing)}")
