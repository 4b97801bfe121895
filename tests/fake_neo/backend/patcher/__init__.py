"""Forge Neo overlay of the simulated Forge package: this folder first, then tests/fake_forge's same folder
(only the files Neo changed live here)."""

import pathlib

_here = pathlib.Path(__file__).resolve().parent
_root = next(p for p in _here.parents if p.name == "fake_neo")
__path__.append(str(_root.parent / "fake_forge" / _here.relative_to(_root)))  # noqa: F821 (package __path__)
