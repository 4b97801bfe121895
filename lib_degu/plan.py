"""Per-image plan of a pass: which prompt parts carry the subject and what their generic text is.

Hosts split prompts into ``AND`` parts themselves; the adapter hands the parts over and gets back
which parts need a context-stream row (parts without the subject are shared by both streams).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lib_degu.prompts import find_subject, make_generic_prompt
from lib_degu.settings import DeGuSettings


@dataclass(frozen=True)
class PartPlan:
    text: str
    weight: float
    generic: str | None  # None: the part has no subject and is shared by both streams


@dataclass(frozen=True)
class ImagePlan:
    parts: tuple[PartPlan, ...]

    @property
    def active(self) -> bool:
        return any(part.generic is not None for part in self.parts)

    @property
    def first_subject_part(self) -> int:
        return next(i for i, part in enumerate(self.parts) if part.generic is not None)


def plan_image(parts: Sequence[tuple[str, float]], settings: DeGuSettings) -> ImagePlan:
    planned = []
    for text, weight in parts:
        has_subject = bool(find_subject(text, settings.subject))
        generic = make_generic_prompt(text, settings.subject, settings.generic) if has_subject else None
        planned.append(PartPlan(text, weight, generic))
    return ImagePlan(tuple(planned))


def check_settings(settings: DeGuSettings) -> str | None:
    """A message when the settings cannot work for any prompt, else None."""
    if not settings.subject.strip():
        return "DeGu: no subject token given; DeGu is off for this generation."
    generic_words = settings.generic.lower().split()
    if settings.subject.lower().split() == generic_words:
        return "DeGu: the generic word equals the subject; both streams would be the same, DeGu is off."
    if find_subject(settings.generic, settings.subject):
        return (
            f"DeGu: the generic word '{settings.generic}' contains the subject '{settings.subject}'; "
            "the context prompt would still name the subject, DeGu is off."
        )
    return None
