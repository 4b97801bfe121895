"""The one settings schema behind the UI, infotext, paste, X/Y/Z axes and API arguments."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lib_degu.mask import MaskParams

MASK_SOURCES = ("attention", "difference", "full")
INFOTEXT_ENABLED = "DeGu"


@dataclass(frozen=True)
class FieldSpec:
    """How one setting is shown, validated and written: UI label, infotext key, range or choices."""

    label: str
    infotext: str | None
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    # The value an infotext written before the setting existed stands for (None: the default).
    before_it_existed: Any = None


@dataclass(frozen=True)
class DeGuSettings:
    """Every user-facing DeGu setting. Field order is the UI order and the positional API order."""

    enabled: bool = field(
        default=False,
        metadata={"spec": FieldSpec("Enable DeGu", INFOTEXT_ENABLED, "Turn Decoupled Guidance on.")},
    )
    subject: str = field(
        default="",
        metadata={"spec": FieldSpec(
            "Subject token(s)", "DeGu subject",
            "The word(s) that name your personalised subject in the prompt: sks, ohwx, a trigger "
            "word or an embedding name. Include the class word (sks dog, generic dog): the mask then "
            "follows both words and finds the subject better.")},
    )
    generic: str = field(
        default="",
        metadata={"spec": FieldSpec(
            "Generic word", "DeGu generic",
            "What the subject becomes in the context prompt: 'dog' for 'sks dog' -> 'dog', 'a' for "
            "'sks dog' -> 'a dog'. Empty removes the subject word.")},
    )
    identity_scale: float = field(
        default=1.0,
        metadata={"spec": FieldSpec(
            "Identity scale", "DeGu identity scale",
            "Multiplies the guidance of the prompt as written, inside the subject mask.",
            minimum=0.0, maximum=3.0, step=0.05)},
    )
    context_scale: float = field(
        default=1.0,
        metadata={"spec": FieldSpec(
            "Context scale", "DeGu context scale",
            "Multiplies the guidance of the generic prompt, outside the subject mask.",
            minimum=0.0, maximum=3.0, step=0.05)},
    )
    balance: float = field(
        default=0.0,
        metadata={"spec": FieldSpec(
            "Fidelity <-> editability", "DeGu balance",
            "+1: identity guidance everywhere (max fidelity). -1: generic guidance everywhere (max "
            "editability). 0: the estimated subject mask.",
            minimum=-1.0, maximum=1.0, step=0.05)},
    )
    mask_source: str = field(
        default="attention",
        metadata={"spec": FieldSpec(
            "Mask source", "DeGu mask",
            "attention: where the image looks at the subject token. difference: where removing the "
            "subject changes the prediction. full: no spatial mixing.",
            choices=MASK_SOURCES)},
    )
    threshold: float = field(
        default=0.35,
        metadata={"spec": FieldSpec(
            "Mask threshold", "DeGu threshold",
            "Normalised attention above this counts as subject.",
            minimum=0.0, maximum=1.0, step=0.01)},
    )
    softness: float = field(
        default=0.1,
        metadata={"spec": FieldSpec(
            "Mask softness", "DeGu softness",
            "Width of the transition around the threshold; 0 gives a hard edge.",
            minimum=0.0, maximum=1.0, step=0.01)},
    )
    blur: float = field(
        default=1.0,
        metadata={"spec": FieldSpec(
            "Mask blur", "DeGu blur", "Gaussian blur of the mask, in latent pixels (8 image pixels).",
            minimum=0.0, maximum=8.0, step=0.1)},
    )
    ema: float = field(
        default=0.5,
        metadata={"spec": FieldSpec(
            "Mask smoothing across steps", "DeGu EMA",
            "How much of the previous step's mask is kept; 0 uses each step's mask alone.",
            minimum=0.0, maximum=0.99, step=0.01)},
    )
    start: float = field(
        default=0.0,
        metadata={"spec": FieldSpec(
            "Start at", "DeGu start", "Fraction of the sampling steps where DeGu starts.",
            minimum=0.0, maximum=1.0, step=0.01)},
    )
    end: float = field(
        default=1.0,
        metadata={"spec": FieldSpec(
            "End at", "DeGu end", "Fraction of the sampling steps where DeGu stops (1: the last step).",
            minimum=0.0, maximum=1.0, step=0.01)},
    )
    show_mask: bool = field(
        default=False,
        metadata={"spec": FieldSpec(
            "Show mask", None, "Add the final mask as a heat-map over each image to the gallery.")},
    )
    # Added after the first release: last, so positional API callers written before them keep working.
    context_refresh: int = field(
        default=3,
        metadata={"spec": FieldSpec(
            "Context refresh every N steps", "DeGu context refresh",
            "Run the generic prompt only on every N-th step and reuse its difference to the prompt in "
            "between: 3 costs about 1.2x plain CFG instead of 1.5x, with a slightly weaker context. "
            "1 runs it on every step (exact); below balance 0 it always runs on every step.",
            minimum=1, maximum=8, step=1, before_it_existed=1)},
    )
    snap: int = field(
        default=0,
        metadata={"spec": FieldSpec(
            "Snap mask to image edges", "DeGu snap",
            "Rounds of edge-aware smoothing that pull the coarse attention mask onto the subject's "
            "outline in the predicted image (5 follows it best). The tighter mask hands the subject's "
            "rim to the scene and measured no better overall, so 0 (off) is the default.",
            minimum=0, maximum=10, step=1, before_it_existed=0)},
    )
    layout_pass: bool = field(
        default=False,
        metadata={"spec": FieldSpec(
            "Layout pass (2x time)", "DeGu layout pass",
            "Sample each image twice from the same noise: the first pass finds where the subject lands, "
            "the second guides with a tight mask of that place from the first step. About twice the "
            "time. On the project's test models, with an ancestral sampler (Euler a, DPM++ SDE), it "
            "nearly tripled DeGu's gain over a global mix and moved the result towards the scene; with "
            "a deterministic one (DPM++ 2M, Euler, DDIM) it gained nothing measurable. Needs the "
            "attention mask.",
            before_it_existed=False)},
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec: FieldSpec = f.metadata["spec"]
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"DeGu: '{f.name}' must be true or false, got {value!r}")
            if f.type == "str" and not isinstance(value, str):
                raise ValueError(f"DeGu: '{f.name}' must be text, got {value!r}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"DeGu: '{f.name}' must be a whole number, got {value!r}")
            if spec.choices is not None and value not in spec.choices:
                raise ValueError(f"DeGu: '{f.name}' must be one of {', '.join(spec.choices)}; got {value!r}")
            if spec.minimum is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"DeGu: '{f.name}' must be a finite number, got {value!r}")
                if not spec.minimum <= value <= spec.maximum:
                    raise ValueError(
                        f"DeGu: '{f.name}' must be between {spec.minimum:g} and {spec.maximum:g}, got {value!r}"
                    )
        if self.start > self.end:
            raise ValueError(f"DeGu: 'start' ({self.start:g}) must not be after 'end' ({self.end:g})")

    # -- schema ----------------------------------------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def spec(cls, name: str) -> FieldSpec:
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}[name]

    @property
    def mask_params(self) -> MaskParams:
        return MaskParams(
            threshold=self.threshold, softness=self.softness, blur=self.blur, ema=self.ema, balance=self.balance,
            snap=self.snap,
        )

    def replace(self, **changes: Any) -> DeGuSettings:
        return self.from_dict({**dataclasses.asdict(self), **changes})

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Sequence[Any]) -> DeGuSettings:
        """Positional arguments in UI order (the WebUI's script args, the API's ``args`` list).

        A dict in first position is read as named fields (API convenience: the WebUI fills the
        remaining positions with UI defaults, which are then ignored); missing trailing args keep
        their defaults.
        """
        args = list(args)
        if args and isinstance(args[0], Mapping):
            return cls.from_dict(args[0])
        names = cls.names()
        if len(args) > len(names):
            raise ValueError(f"DeGu: expected at most {len(names)} arguments ({', '.join(names)}), got {len(args)}")
        return cls.from_dict(dict(zip(names, args, strict=False)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeGuSettings:
        """Named fields (API/JSON). Unknown names are rejected, naming them."""
        names = cls.names()
        unknown = [key for key in values if key not in names]
        if unknown:
            raise ValueError(
                f"DeGu: unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}"
            )
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{key: _coerce(key, types[key], value) for key, value in values.items()})

    # -- infotext --------------------------------------------------------------------------------
    def to_infotext(self) -> dict[str, str]:
        """Infotext entries; empty when disabled (a missing key means disabled)."""
        if not self.enabled:
            return {}
        entries = {}
        for f in dataclasses.fields(self):
            key = f.metadata["spec"].infotext
            text = _format(getattr(self, f.name))
            # A1111's and Forge's parser cannot read an empty value ("Error parsing", key dropped);
            # a missing key pastes as the default, which is the empty text.
            if key is not None and not (text.strip() == "" and f.default == ""):
                entries[key] = text
        return entries

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> DeGuSettings:
        """Settings from parsed infotext; without the ``DeGu`` key, the defaults (disabled)."""
        if str(params.get(INFOTEXT_ENABLED, "")).lower() != "true":
            return cls()
        values = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["spec"].infotext
            if key is not None and key in params:
                values[f.name] = params[key]
            elif key is not None and f.metadata["spec"].before_it_existed is not None:
                values[f.name] = f.metadata["spec"].before_it_existed
        return cls.from_dict(values)


def _format(value: object) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return str(value)


def _coerce(name: str, kind: str, value: Any) -> Any:
    """Accept what UIs, JSON and infotext deliver (ints for floats, "true", "0.5")."""
    try:
        if kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            return value
        if kind == "int":
            if isinstance(value, bool):
                return value  # rejected by validation
            number = float(value) if isinstance(value, (int, float, str)) else value
            # Sliders and X/Y/Z deliver 3.0 for 3; 2.5 is not a step count.
            if isinstance(number, float) and number.is_integer():
                return int(number)
            return value
        if kind == "float":
            if isinstance(value, bool):
                return value  # rejected by validation: True is not a scale
            if isinstance(value, (int, float, str)):
                return float(value)
            return value
        if kind == "str" and value is None:
            return ""
        return value
    except ValueError:
        raise ValueError(f"DeGu: '{name}' must be a number, got {value!r}") from None
