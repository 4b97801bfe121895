"""The personalised subjects: appearance combinations the base model never saw, each taught from a
few images in one context (so that the context gets entangled with the subject, as in the paper).

A subject is written ``token:shape:colour:pattern:background:texture`` on the command line, e.g.
``sks:circle:purple:striped:teal:checkered``. The class word is the shape ("a sks circle" ->
generic "a circle"); fidelity is the subject's colour and pattern inside its region.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subject:
    token: str
    shape: str
    colour: str
    striped: bool
    background: str  # the one training context
    texture: str

    @classmethod
    def parse(cls, text: str) -> Subject:
        token, shape, colour, pattern, background, texture = text.split(":")
        if pattern not in ("striped", "solid"):
            raise ValueError(f"pattern must be striped or solid, got {pattern!r}")
        return cls(token, shape, colour, pattern == "striped", background, texture)

    def __str__(self) -> str:
        pattern = "striped" if self.striped else "solid"
        return f"{self.token}:{self.shape}:{self.colour}:{pattern}:{self.background}:{self.texture}"

    @property
    def combination(self) -> tuple[str, str, bool]:
        return (self.shape, self.colour, self.striped)


SUBJECTS = (
    Subject("sks", "circle", "purple", True, "teal", "checkered"),
    Subject("ohwx", "triangle", "yellow", True, "pink", "dotted"),
    Subject("zkw", "square", "green", False, "brown", "plain"),
)
EXCLUDED = frozenset(s.combination for s in SUBJECTS)
