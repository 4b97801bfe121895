"""Does cross-attention tell two named objects apart, and does DeGu's mask?

    python -m lab.which_object

Two measurements on two-object scenes, both read against the judge's regions of the generated image:

- *words*: the base model, 64 held-out two-object captions (plain CFG). For each object, the
  attention its own noun (colour word) gets in its own region, as a share of its own plus the other
  object's noun (colour word) there; and its noun's attention in its region against in the other
  object's region and against the background. 0.5: the maps do not tell the objects apart.
- *masks*: the nine personalised models in the four two-object held-out contexts of the quality
  experiment (8 seeds each), DeGu at its defaults with the subject phrase ("sks circle", generic
  "circle"): the mean of the final mask, and of the layout a layout pass would use, over the
  subject's region, the second object's region and the background.

A mask that covers the second object as much as the subject lets identity guidance act on the very
context the entangled models give up (lab/models/README.md).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab import judge as lab_judge
from lab import model as lab_model
from lab import personalise, scenes, scoring
from lab.experiment import contexts
from lab.prompt_following import HELD_OUT_SEED
from lab.sampling import sample
from lab.subjects import EXCLUDED, SUBJECTS
from lib_degu.attention import AttentionCapture
from lib_degu.settings import DeGuSettings


def _late_map(model: lab_model.Miniature, caption: str, seed: int, word: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 level's attention on ``word`` (at the latent's size), averaged over the second half of
    the steps, and the image; DeGu at balance +1 reads the attention and changes nothing."""
    probe = AttentionCapture(model.unet, downsample_factors=(2,))
    probe.__enter__()
    try:
        settings = DeGuSettings.from_dict({"enabled": True, "subject": word, "generic": "", "balance": 1.0})
        result = sample(model, [caption], [seed], settings, probes=[probe])
    finally:
        probe.remove()
    steps = result.probed[0]
    return torch.stack([s[0].flatten() for s in steps[len(steps) // 2:]]).mean(0), result.images


def _cells(region: torch.Tensor) -> torch.Tensor:
    """A (32, 32) region as the latent cells it mostly covers."""
    return F.adaptive_avg_pool2d(region.float()[None, None], lab_model.LATENT_SIZE).flatten() > 0.5


def _share(here: torch.Tensor, there: torch.Tensor) -> float:
    return float(here.mean() / (here.mean() + there.mean()))


def word_shares(model: lab_model.Miniature, judge: lab_judge.Judge, count: int = 64) -> dict[str, list[float]]:
    rng = np.random.default_rng(HELD_OUT_SEED)
    shares: dict[str, list[float]] = defaultdict(list)
    for seed in range(count):
        scene = scenes.random_scene(rng, excluded=EXCLUDED, two_objects=1.0)
        a, b = scene.things
        caption = scene.caption()
        words = (a.colour, b.colour, a.shape, b.shape)
        if a.colour == b.colour or a.shape == b.shape or any(caption.split().count(w) != 1 for w in words):
            continue  # each word must name one object only
        maps, images = {}, None
        for word in words:
            maps[word], images = _late_map(model, caption, seed, word)
        region = lab_judge.read(judge, images).region[0]
        cells = {t.shape: _cells(region == lab_judge.REGIONS.index(t.shape)) for t in scene.things}
        background = _cells(region == 0)
        for own, other in ((a, b), (b, a)):
            drawn = int((region == lab_judge.REGIONS.index(own.shape)).sum()) >= scoring.MIN_REGION
            if not drawn or not cells[own.shape].any():
                continue
            mine = cells[own.shape]
            for kind, word, other_word in (("noun", own.shape, other.shape), ("colour word", own.colour, other.colour)):
                shares[f"{kind}: own vs the other object's, in its region"].append(
                    _share(maps[word][mine], maps[other_word][mine]))
            noun = maps[own.shape]
            if cells[other.shape].any():
                shares["noun: its region vs the other object's"].append(_share(noun[mine], noun[cells[other.shape]]))
            if background.any():
                shares["noun: its region vs the background"].append(_share(noun[mine], noun[background]))
    return shares


def mask_cover(base: lab_model.Miniature, judge: lab_judge.Judge, seeds: Sequence[int]) -> dict[str, list[list[float]]]:
    """Per method: per image, mean final mask and layout over subject, second object, background."""
    cover: dict[str, list[list[float]]] = defaultdict(list)
    for subject in SUBJECTS:
        cases = [(c, s) for c in contexts(subject, "all") if c.other is not None for s in seeds]
        words = f"{subject.token} {subject.shape}"
        settings = DeGuSettings.from_dict({"enabled": True, "subject": words, "generic": subject.shape})
        for method in personalise.METHODS:
            model = personalise.load(subject, method, base)
            result = sample(model, [c.prompt(words) for c, _ in cases], [s for _, s in cases], settings, keep_maps=True)
            reading = lab_judge.read(judge, result.images)
            size = reading.region.shape[-2:]
            final = F.interpolate(result.masks[-1].float(), size=size, mode="bilinear")[:, 0]
            layout = F.interpolate(result.layout.float(), size=size, mode="nearest")[:, 0]
            for i, (context, _) in enumerate(cases):
                regions = (reading.region[i] == lab_judge.REGIONS.index(subject.shape),
                           reading.region[i] == lab_judge.REGIONS.index(context.other.shape),
                           reading.region[i] == 0)
                if any(int(r.sum()) < scoring.MIN_REGION for r in regions[:2]):
                    continue  # both objects must be drawn
                cover[method].append([float(m[i][r].mean()) for m in (final, layout) for r in regions])
    return cover


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=lab_model.MODELS_DIR / "base.safetensors",
                        help="the base model the words are read from")
    parser.add_argument("--words-only", action="store_true", help="leave out the personalised models' masks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, judge = lab_model.load(args.model), lab_judge.load()
    print("words (base model; share > 0.5: the map prefers the first over the second)")
    for key, values in word_shares(base, judge).items():
        print(f"  {key:<50} {statistics.fmean(values):.3f}  (> 0.5 for {np.mean(np.array(values) > 0.5):.2f} "
              f"of {len(values)} objects)")
    if args.words_only:
        return
    print("masks (DeGu defaults; mean over subject / second object / background)")
    for method, rows in mask_cover(base, judge, args.seeds).items():
        mean = np.array(rows).mean(0)
        print(f"  {method:<10} final mask {mean[0]:.3f} / {mean[1]:.3f} / {mean[2]:.3f}   "
              f"layout {mean[3]:.3f} / {mean[4]:.3f} / {mean[5]:.3f}   ({len(rows)} images)")


if __name__ == "__main__":
    main()
