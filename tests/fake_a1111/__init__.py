"""A small simulated AUTOMATIC1111 WebUI 1.10.1 host for tests (no UI, no VAE, tiny random models).

``modules/`` here is the top-level ``modules`` package of the WebUI. Importing this package changes
nothing; ``install()`` (or ``with installed():``) makes ``import modules.shared`` etc. resolve to the
fakes: it puts this directory first on ``sys.path`` and swaps any other host's packages
(``modules``, ``backend``, ``ldm``, ``sgm``, ``k_diffusion``, ``launch`` - e.g. the Forge fake's) out
of ``sys.modules``; ``uninstall()`` swaps them back. The fake's own module objects are kept between
installs, so code that imported them once (``from modules import shared``) keeps seeing the same
``shared.opts`` / ``callback_map`` after a re-install. Calls nest.

Import the fake's modules only as ``modules.*`` (never as ``tests.fake_a1111.modules.*``), and
import extension code that binds ``modules`` (e.g. an A1111 adapter) while installed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

ROOT = os.path.dirname(os.path.abspath(__file__))
HOST_PACKAGES = ("modules", "backend", "ldm", "sgm", "k_diffusion", "launch")
OWN_PACKAGES = ("modules",)

_own: dict[str, ModuleType] = {}
_foreign: dict[str, ModuleType] = {}
_depth = 0


def _top(name: str) -> str:
    return name.partition(".")[0]


def _is_own(module: ModuleType | None) -> bool:
    path = getattr(module, "__file__", None) or ""
    return os.path.abspath(path).startswith(ROOT + os.sep)


def install() -> None:
    """Make ``modules`` the fake A1111 one (see the module docstring)."""
    global _depth
    _depth += 1
    if _depth > 1:
        return
    _foreign.clear()
    for name in [n for n in sys.modules if _top(n) in HOST_PACKAGES]:
        module = sys.modules[name]
        if not (_top(name) in OWN_PACKAGES and _is_own(module)):
            _foreign[name] = module
        del sys.modules[name]
    sys.modules.update(_own)
    if ROOT in sys.path:
        sys.path.remove(ROOT)
    sys.path.insert(0, ROOT)


def uninstall() -> None:
    """Undo ``install()``: remove the fake's modules and restore what was there before."""
    global _depth
    if _depth == 0:
        return
    _depth -= 1
    if _depth > 0:
        return
    for name in [n for n in sys.modules if _top(n) in HOST_PACKAGES]:
        module = sys.modules.pop(name)
        if _top(name) in OWN_PACKAGES and _is_own(module):
            _own[name] = module
    sys.modules.update(_foreign)
    _foreign.clear()
    if ROOT in sys.path:
        sys.path.remove(ROOT)


def is_installed() -> bool:
    return _depth > 0


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``install()`` for the duration of the block (nests)."""
    install()
    try:
        yield
    finally:
        uninstall()
