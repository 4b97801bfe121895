"""Procedural scenes with known ground truth: coloured shapes on coloured, textured backgrounds.

Every scene is drawn at 32x32 from a :class:`Scene` (what the caption says) and comes with its
per-pixel labels (which object covers each pixel), so the quality experiment can score any image
against the prompt that made it. Colours are far apart in RGB so a small judge network reads them
reliably; "striped" objects alternate the object's colour with a dark shade of it (the hue stays
the object's own, so it never looks like another palette colour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
OBJECT_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "purple": (150, 50, 210),
}
BACKGROUND_COLOURS = {
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "brown": (125, 75, 35),
    "teal": (0, 125, 125),
    "pink": (245, 160, 185),
    "sky": (140, 200, 245),
}
TEXTURES = ("plain", "checkered", "dotted")
STRIPE_SHADE = 0.35


@dataclass(frozen=True)
class Thing:
    """One object: what the caption says about it, and where it is."""

    shape: str
    colour: str
    striped: bool = False
    cx: float = 16.0
    cy: float = 16.0
    radius: float = 7.0

    def words(self, name: str | None = None) -> str:
        """``red striped circle``; ``name`` (a subject token) replaces the colour and pattern words."""
        if name is not None:
            return f"{name} {self.shape}"
        return f"{self.colour} {'striped ' if self.striped else ''}{self.shape}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str
    texture: str
    names: tuple[str | None, ...] = field(default=())

    def caption(self, vague: Sequence[bool] = (), context: bool = True) -> str:
        """The prompt; an object whose ``vague`` flag is set is named by its shape alone ("a circle");
        without ``context`` the background is left unsaid ("a red circle")."""
        names = self.names or (None,) * len(self.things)
        vague = tuple(vague) or (False,) * len(self.things)
        objects = " and ".join(
            f"a {t.shape if v and n is None else t.words(n)}"
            for t, n, v in zip(self.things, names, vague, strict=True)
        )
        return f"{objects} on a {self.texture} {self.background} background" if context else objects

    def word_positions(self, vague: Sequence[bool] = ()) -> tuple[tuple[int, ...], ...]:
        """Per object, the token positions of the words that describe it in :meth:`caption` (colour,
        pattern, subject name and shape; not the article), counting BOS as position 0."""
        names = self.names or (None,) * len(self.things)
        vague = tuple(vague) or (False,) * len(self.things)
        found, position = [], 1
        for t, n, v in zip(self.things, names, vague, strict=True):
            count = 1 if v and n is None else len(t.words(n).split())
            found.append(tuple(range(position + 1, position + 1 + count)))  # after "a"
            position += count + 2  # the article and "and"
        return tuple(found)


def shape_mask(thing: Thing, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) coverage of one object, sampled at pixel centres."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy, r = x - thing.cx, y - thing.cy, thing.radius
    if thing.shape == "circle":
        return dx**2 + dy**2 <= r**2
    if thing.shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if thing.shape == "triangle":  # pointing up: width grows linearly from the apex
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if thing.shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {thing.shape!r}")


def _second_tone(rgb: np.ndarray) -> np.ndarray:
    """The texture's other tone: lighter on dark backgrounds, darker on light ones."""
    luminance = rgb.mean()
    return np.clip(rgb + (60 if luminance < 128 else -60), 0, 255)


def render(scene: Scene, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) float32 image in [-1, 1] and (size, size) int labels: 0 background, i+1 object i."""
    base = np.array(BACKGROUND_COLOURS[scene.background], dtype=np.float32)
    image = np.broadcast_to(base[:, None, None], (3, size, size)).copy()
    y, x = np.mgrid[0:size, 0:size]
    if scene.texture == "checkered":
        cells = ((x // 4) + (y // 4)) % 2 == 1
        image[:, cells] = _second_tone(base)[:, None]
    elif scene.texture == "dotted":
        dots = (x % 4 == 1) & (y % 4 == 1)
        image[:, dots] = _second_tone(base)[:, None]
    labels = np.zeros((size, size), dtype=np.int64)
    for index, thing in enumerate(scene.things):
        covered = shape_mask(thing, size)
        colour = np.array(OBJECT_COLOURS[thing.colour], dtype=np.float32)
        image[:, covered] = colour[:, None]
        if thing.striped:
            stripes = covered & ((y // 2) % 2 == 1)
            image[:, stripes] = (colour * STRIPE_SHADE)[:, None]
        labels[covered] = index + 1
    return image / 127.5 - 1.0, labels


def random_thing(
    rng: np.random.Generator, shape: str | None = None, colour: str | None = None, striped: bool | None = None,
    avoid: Thing | None = None, small: bool = False,
) -> Thing:
    """A thing at a random place and size, fully inside the image; away from ``avoid`` if given."""
    for _ in range(100):
        radius = float(rng.uniform(4.5, 6.5) if small else rng.uniform(4.5, 8.5))
        cx, cy = (float(v) for v in rng.uniform(radius + 1, SIZE - radius - 1, size=2))
        if avoid is None or np.hypot(cx - avoid.cx, cy - avoid.cy) > radius + avoid.radius + 1.5:
            break
    return Thing(
        shape=shape if shape is not None else str(rng.choice(SHAPES)),
        colour=colour if colour is not None else str(rng.choice(list(OBJECT_COLOURS))),
        striped=bool(rng.random() < 0.5) if striped is None else striped,
        cx=cx, cy=cy, radius=radius,
    )


# The share of training scenes with two objects.
TWO_OBJECTS = 0.3


def random_scene(
    rng: np.random.Generator,
    excluded: frozenset[tuple[str, str, bool]] = frozenset(),
    two_objects: float = TWO_OBJECTS,
) -> Scene:
    """A training scene; (shape, colour, striped) combinations in ``excluded`` never appear."""
    def draw(small: bool, avoid: Thing | None = None) -> Thing:
        while True:
            thing = random_thing(rng, avoid=avoid, small=small)
            if (thing.shape, thing.colour, thing.striped) not in excluded:
                return thing

    if rng.random() < two_objects:
        first = draw(small=True)
        things: tuple[Thing, ...] = (first, draw(small=True, avoid=first))
    else:
        things = (draw(small=False),)
    return Scene(
        things=things,
        background=str(rng.choice(list(BACKGROUND_COLOURS))),
        texture=str(rng.choice(TEXTURES)),
    )
