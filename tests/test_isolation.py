"""lib_degu must import nothing from any WebUI: proved in a clean interpreter."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import lib_degu

ROOT = Path(__file__).resolve().parent.parent
HOST_PACKAGES = ("modules", "backend", "ldm", "sgm", "k_diffusion", "gradio", "launch")


def _core_modules():
    return sorted(
        m.name for m in pkgutil.walk_packages(lib_degu.__path__, "lib_degu.") if not m.name.startswith("lib_degu.hosts")
    )


def test_core_imports_no_host_module():
    modules = _core_modules()
    assert {"lib_degu.guidance", "lib_degu.mask", "lib_degu.prompts", "lib_degu.attention"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HOST_PACKAGES!r})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
