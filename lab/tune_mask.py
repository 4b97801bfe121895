"""Where do the mask defaults come from? Measure the attention maps on the dev split.

    python -m lab.tune_mask                        # dev split, every method x subject

One DeGu run per method x subject (attention mask at the current defaults) records, at every step,
the raw subject-attention map of each layer choice (latent factor 2, factor 4, both). The subject's
region in the final image (the judge's reading) is the ground truth. Printed:

1. per layer choice and step fraction, the AUROC of the raw map (how well it ranks subject pixels
   above the rest; 0.5 is chance): which layers, and from which step the map is informative;
2. for the chosen layers, the mean IoU of the refined final mask over a grid of normalisation,
   blur, threshold, softness, EMA and the first trusted step (the EMA starts there): the defaults;
3. at the other defaults, the IoU and mean of the final mask over rounds of edge snapping
   (``snap``, to the identity stream's predicted image of each step) x threshold.

Refinement here calls ``lib_degu.mask`` itself on the recorded maps; the generation that produced
them used the current defaults, so the grid ranks mask settings on one fixed set of trajectories
(the experiment then checks the chosen ones end to end).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Sequence

import torch

from lab import judge as lab_judge
from lab import model as lab_model
from lab import personalise, scoring
from lab.experiment import contexts, degu_settings
from lab.sampling import sample
from lab.subjects import SUBJECTS
from lib_degu import mask
from lib_degu.attention import DEFAULT_DOWNSAMPLE_FACTORS, AttentionCapture
from lib_degu.settings import DeGuSettings

LAYER_CHOICES = {"factor 2": (2,), "factor 4": (4,), "factors 2+4": (2, 4)}
FRACTIONS = (0.05, 0.15, 0.25, 0.4, 0.5, 0.75, 1.0)
SNAP_ROUNDS = (0, 1, 3, 5, 8)
NORMALISATIONS = {"divide q98": (None, 0.98), "min-max q05-q98": (0.05, 0.98), "min-max q0-q100": (0.0, 1.0)}


def record(
    split: str, seeds: Sequence[int], phrase: bool = False
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor], torch.Tensor]:
    """Per layer choice, per step, the raw maps of every image (all pairs concatenated); per step the
    identity stream's predicted images; the regions.

    ``phrase``: the subject field holds the token and the class word ("sks circle", generic
    "circle"): the same generic prompt, but the mask reads the attention of both words.
    """
    base, judge = lab_model.load(), lab_judge.load()
    maps: dict[str, list[list[torch.Tensor]]] = {name: [] for name in LAYER_CHOICES}
    predicted: list[list[torch.Tensor]] = []
    regions = []
    for subject in SUBJECTS:
        cases = [(c, s) for c in contexts(subject, split) for s in seeds]
        prompts = [c.prompt(f"{subject.token} {subject.shape}") for c, _ in cases]
        for method in personalise.METHODS:
            model = personalise.load(subject, method, base)
            probes = [AttentionCapture(model.unet, downsample_factors=f) for f in LAYER_CHOICES.values()]
            for probe in probes:
                probe.__enter__()
            try:
                settings = degu_settings(subject)
                if phrase:
                    settings = settings.replace(subject=f"{subject.token} {subject.shape}", generic=subject.shape)
                result = sample(model, prompts, [s for _, s in cases], settings, probes=probes, keep_maps=True)
            finally:
                for probe in probes:
                    probe.remove()
            reading = lab_judge.read(judge, result.images)
            regions.append(scoring.region_at_latent(scoring.subject_region(reading, subject)))
            for name, per_step in zip(LAYER_CHOICES, result.probed, strict=True):
                maps[name].append(per_step)
            predicted.append(result.predicted)
    joined = {name: [torch.cat(step) for step in zip(*runs, strict=True)] for name, runs in maps.items()}
    return joined, [torch.cat(step) for step in zip(*predicted, strict=True)], torch.cat(regions)


def refined_final(steps: list[torch.Tensor], norm: tuple[float | None, float], blur: float, threshold: float,
                  softness: float, ema: float, trust: float) -> torch.Tensor:
    state = mask.MaskState()
    first = min(len(steps) - 1, int(trust * len(steps)))
    out = None
    for raw in steps[first:]:
        low, high = norm
        m = mask.normalise(raw, quantile=high, low_quantile=low)
        m = mask.gaussian_blur(m, blur * raw.shape[-2] / lab_model.LATENT_SIZE)
        m = mask.soft_threshold(m, threshold, softness)
        out = state.update(m, ema)
    assert out is not None
    return out[:, None]


def snapped_final(steps: list[torch.Tensor], predicted: list[torch.Tensor], params: mask.MaskParams) -> torch.Tensor:
    """The final mask as ``lib_degu.mask.refine`` makes it at ``params``, each step snapped to that step's image."""
    state = mask.MaskState()
    size = (lab_model.LATENT_SIZE, lab_model.LATENT_SIZE)
    out = None
    for raw, image in zip(steps, predicted, strict=True):
        out = mask.refine(raw, size, params, state, image=image)
    assert out is not None
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure attention maps and rank mask settings (dev split).")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--phrase", action="store_true", help="subject field 'sks circle' instead of 'sks'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-grid", action="store_true", help="skip the grid of section 2 (the slow part)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    maps, predicted, regions = record(args.split, args.seeds, args.phrase)
    valid = regions.flatten(1).any(1)
    print(f"{int(valid.sum())} of {len(valid)} images have the subject's shape (the others are left out)")
    print("\nAUROC of the raw map by step fraction")
    print(f"{'layers':<14}" + "".join(f"{f:>7g}" for f in FRACTIONS))
    for name, steps in maps.items():
        row = []
        for fraction in FRACTIONS:
            raw = steps[max(0, round(fraction * len(steps)) - 1)]
            row.append(statistics.fmean(
                v for v in scoring.auroc(raw[valid], regions[valid]).tolist() if v == v))
        print(f"{name:<14}" + "".join(f"{v:>7.3f}" for v in row))

    print("\nIoU of the refined final mask (top 15 of the grid, factors 2 / 4 / 2+4)")
    results = []
    grid = () if args.no_grid else itertools.product(
        LAYER_CHOICES, NORMALISATIONS, (0.0, 0.5, 1.0), (0.2, 0.3, 0.4, 0.5, 0.6), (0.05, 0.1, 0.2), (0.0, 0.5, 0.8),
        (0.0, 0.2, 0.3, 0.5))
    for layers, norm, blur, threshold, softness, ema, trust in grid:
        final = refined_final([s[valid] for s in maps[layers]], NORMALISATIONS[norm], blur, threshold, softness,
                              ema, trust)
        score = float(scoring.iou(final, regions[valid]).mean())
        results.append((score, float(final.mean()), layers, norm, blur, threshold, softness, ema, trust))
    results.sort(key=lambda r: -r[0])
    print("IoU    cover  layers        normalisation     blur thr  soft ema  trust")
    for r in results[:15]:
        print(f"{r[0]:.3f}  {r[1]:.3f}  {r[2]:<12}  {r[3]:<16}  {r[4]:<4g} {r[5]:<4g} {r[6]:<4g} {r[7]:<4g} {r[8]:g}")
    defaults = DeGuSettings()
    layers = next(name for name, factors in LAYER_CHOICES.items() if factors == DEFAULT_DOWNSAMPLE_FACTORS)
    norm = (mask.NORMALISE_LOW_QUANTILE, mask.NORMALISE_QUANTILE)
    for label, (layer_choice, normalisation, blur, threshold, softness, ema) in {
        "today's defaults (no snap)":
            (layers, norm, defaults.blur, defaults.threshold, defaults.softness, defaults.ema),
        "the first defaults (factors 2+4, divide q98, blur 1, threshold 0.35, softness 0.1, EMA 0.5)":
            ("factors 2+4", NORMALISATIONS["divide q98"], 1.0, 0.35, 0.1, 0.5),
    }.items():
        final = refined_final([s[valid] for s in maps[layer_choice]], normalisation, blur, threshold, softness,
                              ema, 0.0)
        print(f"{label}, every step: IoU {float(scoring.iou(final, regions[valid]).mean()):.3f} "
              f"cover {float(final.mean()):.3f}")

    print("\nIoU / mean of the final mask snapped to the predicted image, at the other defaults")
    chosen = [s[valid] for s in maps[layers]]
    images = [p[valid] for p in predicted]
    thresholds = (0.35, 0.45, 0.55)
    print("snap rounds" + "".join(f"   threshold {t:<9g}" for t in thresholds))
    for rounds in SNAP_ROUNDS:
        cells = []
        for threshold in thresholds:
            final = snapped_final(chosen, images, mask.MaskParams(
                threshold=threshold, softness=defaults.softness, blur=defaults.blur, ema=defaults.ema, snap=rounds))
            cells.append(f"{float(scoring.iou(final, regions[valid]).mean()):.3f} / {float(final.mean()):.3f}")
        print(f"{rounds:<11}" + "".join(f"   {c:<19}" for c in cells))


if __name__ == "__main__":
    main()
