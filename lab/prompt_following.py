"""Does the miniature draw what it is asked for? Per attribute, the share of images that have it.

    python -m lab.prompt_following                 # the base model, 96 held-out captions
    python -m lab.prompt_following --personalised  # + each subject learned / class word kept
    python -m lab.prompt_following --two-objects --count 128 --seed 777 --model other.safetensors

Captions are drawn like the training ones from a seed the trainer never used. An attribute counts as
followed when the judge finds it: the named shape (at least ``MIN_REGION`` pixels), its colour and
pattern (the majority inside that shape's pixels), the background colour and texture (the majority
of the background pixels). For personalised models: *learned* is the share of samples in the
subject's training context whose subject has the subject's appearance (fidelity >= 0.5); *class
kept* is the share of generic-prompt samples ("a circle ...") that show the subject anyway, in the
held-out contexts (what DeGu's context stream asks for) and in the training context.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lab import judge as lab_judge
from lab import model as lab_model
from lab import personalise, scenes, scoring
from lab.experiment import contexts
from lab.sampling import sample
from lab.subjects import EXCLUDED, SUBJECTS, Subject

HELD_OUT_SEED = 12345


def _majority(values: torch.Tensor, where: torch.Tensor) -> int:
    picked = values[where]
    return int(picked.mode().values) if len(picked) else -1


def follow_rates(model: lab_model.Miniature | None, judge: lab_judge.Judge, count: int, seed: int = HELD_OUT_SEED,
                 batch: int = 32, two_objects: float = scenes.TWO_OBJECTS) -> dict[str, float]:
    """Share of held-out captions whose attribute the judge finds; ``model`` None reads the true
    renders of the same scenes instead (the judge's own ceiling). Colour and pattern are also given
    for one- and two-object captions apart, and for two objects how often an object took the other
    object's colour (attribute binding, a known weakness of text-to-image models), and the colour by
    the order the objects are named in. ``two_objects``: the share of captions that name two objects
    (1: only those)."""
    rng = np.random.default_rng(seed)
    drawn = [scenes.random_scene(rng, excluded=EXCLUDED, two_objects=two_objects) for _ in range(count)]
    hits: dict[str, list[float]] = defaultdict(list)
    for start in range(0, count, batch):
        chunk = drawn[start:start + batch]
        if model is None:
            images = torch.from_numpy(np.stack([scenes.render(s)[0] for s in chunk]))
        else:
            images = sample(model, [s.caption() for s in chunk], list(range(start, start + len(chunk)))).images
        reading = lab_judge.read(judge, images)
        for i, scene in enumerate(chunk):
            background = reading.region[i] == 0
            hits["background colour"].append(
                _majority(reading.background[i], background) == lab_judge.BACKGROUNDS.index(scene.background))
            hits["texture"].append(_majority(reading.texture[i], background) == scenes.TEXTURES.index(scene.texture))
            objects = "one object" if len(scene.things) == 1 else "two objects"
            for index, thing in enumerate(scene.things):
                region = reading.region[i] == lab_judge.REGIONS.index(thing.shape)
                present = int(region.sum()) >= scoring.MIN_REGION
                hits["shape"].append(present)
                if not present:  # colour and pattern are read where the shape was drawn
                    continue
                colour = _majority(reading.colour[i], region)
                for key in ("colour (shape found)", f"colour, {objects}"):
                    hits[key].append(colour == lab_judge.COLOURS.index(thing.colour))
                for key in ("pattern (shape found)", f"pattern, {objects}"):
                    hits[key].append(_majority(reading.striped[i], region) == int(thing.striped))
                if len(scene.things) == 2:
                    other = scene.things[1 - index]
                    hits["other's colour"].append(
                        other.colour != thing.colour and colour == lab_judge.COLOURS.index(other.colour))
                    # By the order named: the causal text encoder's first noun has seen only its own colour.
                    hits[f"colour, {('first', 'second')[index]} of two"].append(
                        colour == lab_judge.COLOURS.index(thing.colour))
            if len(scene.things) == 2:
                hits["both objects"].append(all(
                    int((reading.region[i] == lab_judge.REGIONS.index(t.shape)).sum()) >= scoring.MIN_REGION
                    for t in scene.things))
    return {key: statistics.fmean(map(float, values)) for key, values in hits.items()}


def personalisation_rates(model: lab_model.Miniature, judge: lab_judge.Judge, subject: Subject,
                          seeds: Sequence[int]) -> tuple[float, float, float]:
    """Shares of samples whose subject has the subject's appearance (fidelity >= 0.5):
    (learned: the token in its training context; class word, held-out contexts: "a circle on ..."
    where DeGu's context stream asks for it; class word in the training context)."""

    own = scoring.Context(subject.background, subject.texture)
    held_out = contexts(subject, "all")
    asks = [
        [own.prompt(f"{subject.token} {subject.shape}")] * len(seeds),
        [held_out[i % len(held_out)].prompt(subject.shape) for i in range(len(seeds))],
        [own.prompt(subject.shape)] * len(seeds),
    ]
    rates = []
    for prompts in asks:
        images = sample(model, prompts, list(seeds)).images
        rates.append(float((scoring.fidelity(lab_judge.read(judge, images), subject) >= 0.5).float().mean()))
    return rates[0], rates[1], rates[2]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prompt following of the base model, per attribute.")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--personalised", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=lab_model.MODELS_DIR / "base.safetensors",
                        help="the base model to read (e.g. one trained with other settings)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="draws the captions")
    parser.add_argument("--two-objects", action="store_true", help="only captions that name two objects")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, judge = lab_model.load(args.model), lab_judge.load()
    drawn = {"seed": args.seed, "two_objects": 1.0 if args.two_objects else scenes.TWO_OBJECTS}
    ceiling = follow_rates(None, judge, args.count, **drawn)
    print(f"{'attribute':<22} {'model':>6} {'renders':>8}   (renders: the judge reading the true scenes)")
    rates = follow_rates(base, judge, args.count, **drawn)
    for key in sorted(rates, key=lambda k: (k.split(",")[0].split(" (")[0], "," in k, "two" in k)):
        print(f"{key:<22} {rates[key]:6.3f} {ceiling.get(key, float('nan')):8.3f}")
    if args.personalised:
        seeds = list(range(100, 116))
        for subject in SUBJECTS:
            for method in personalise.METHODS:
                learned, shown, shown_own = personalisation_rates(
                    personalise.load(subject, method, base), judge, subject, seeds)
                print(f"{subject.token:<5} {method:<10} learned {learned:.2f}  class word shows the subject: "
                      f"held-out contexts {shown:.2f}, training context {shown_own:.2f}")


if __name__ == "__main__":
    main()
