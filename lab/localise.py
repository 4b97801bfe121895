"""How well does a base model's cross-attention find the object a prompt names, per attention level?

    python -m lab.localise                                   # the committed base
    python -m lab.localise --model /tmp/base16.safetensors   # e.g. one trained with --attention-from-level 0

No personalisation: four objects ("a red circle", "a blue square", ...) in the eight held-out
contexts of the quality experiment (half with a second object, so a map must pick the right one),
sampled with plain CFG (DeGu at balance +1 reads the attention and changes nothing). For each level
with cross-attention (latent factor 1 = 16x16, 2 = 8x8, 4 = 4x4) the raw map of the object's words
is scored against the judge's reading of the object's region: AUROC at 25 / 50 / 100 % of the steps,
and the IoU of the mask DeGu's refinement makes from it (today's defaults, and the best of a small
threshold x blur grid). It is how to judge a finer map before building personalised models on it.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from lab import judge as lab_judge
from lab import model as lab_model
from lab import scoring
from lab.experiment import contexts
from lab.sampling import sample
from lab.subjects import SUBJECTS
from lab.tune_mask import refined_final
from lib_degu import mask
from lib_degu.attention import AttentionCapture
from lib_degu.settings import DeGuSettings

OBJECTS = (("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("white", "cross"))
FRACTIONS = (0.25, 0.5, 1.0)


def levels(model: lab_model.Miniature) -> list[int]:
    """Latent downsample factors that have cross-attention in ``model``'s UNet."""
    return [2**i for i, block in enumerate(model.unet.down_blocks) if getattr(block, "attentions", None)]


def record(model: lab_model.Miniature, judge: lab_judge.Judge, seeds: Sequence[int]
           ) -> tuple[dict[int, list[torch.Tensor]], torch.Tensor]:
    """Per factor, per step, the raw maps of every image; the objects' regions at the latent size."""
    factors = levels(model)
    maps: dict[int, list[list[torch.Tensor]]] = {f: [] for f in factors}
    regions = []
    for colour, shape in OBJECTS:
        cases = [(c, s) for c in contexts(SUBJECTS[0], "all") for s in seeds]
        probes = [AttentionCapture(model.unet, downsample_factors=(f,)) for f in factors]
        for probe in probes:
            probe.__enter__()
        settings = DeGuSettings.from_dict(
            {"enabled": True, "subject": f"{colour} {shape}", "generic": shape, "balance": 1.0})
        try:
            result = sample(model, [c.prompt(f"{colour} {shape}") for c, _ in cases], [s for _, s in cases], settings,
                            probes=probes)
        finally:
            for probe in probes:
                probe.remove()
        reading = lab_judge.read(judge, result.images)
        regions.append(scoring.region_at_latent(reading.region == lab_judge.REGIONS.index(shape)))
        for factor, per_step in zip(factors, result.probed, strict=True):
            maps[factor].append(per_step)
    return {f: [torch.cat(step) for step in zip(*runs, strict=True)] for f, runs in maps.items()}, torch.cat(regions)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=lab_model.MODELS_DIR / "base.safetensors")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    maps, regions = record(lab_model.load(args.model), lab_judge.load(), args.seeds)
    valid = regions.flatten(1).any(1)
    print(f"{args.model}: the object drawn in {int(valid.sum())} of {len(valid)} images (the others are left out)")
    defaults = DeGuSettings()
    normalisation = (mask.NORMALISE_LOW_QUANTILE, mask.NORMALISE_QUANTILE)
    for factor, steps in maps.items():
        steps = [s[valid] for s in steps]
        auroc = [statistics.fmean(v for v in scoring.auroc(steps[max(0, round(f * len(steps)) - 1)],
                                                           regions[valid]).tolist() if v == v) for f in FRACTIONS]

        def iou(blur: float, threshold: float, steps: list[torch.Tensor] = steps) -> tuple[float, float]:
            final = refined_final(steps, normalisation, blur, threshold, defaults.softness, defaults.ema, 0.0)
            return float(scoring.iou(final, regions[valid]).nanmean()), float(final.mean())

        today, cover = iou(defaults.blur, defaults.threshold)
        best = max((iou(b, t)[0], b, t) for b in (0.0, 0.5, 1.0) for t in (0.35, 0.5, 0.6))
        size = lab_model.LATENT_SIZE // factor
        print(f"factor {factor} ({size}x{size}): AUROC at 25/50/100 % of the steps "
              + " ".join(f"{a:.3f}" for a in auroc)
              + f" | IoU at the defaults {today:.3f} (mask mean {cover:.2f}); best {best[0]:.3f} "
              f"(blur {best[1]:g}, threshold {best[2]:g})")


if __name__ == "__main__":
    main()
