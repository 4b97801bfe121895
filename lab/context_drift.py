"""How fast does the context stream's contribution change over the schedule? (issue 16)

    python -m lab.context_drift                 # test split, every method x subject, 2 seeds

Samples full DeGu at the defaults (the subject field 'sks circle' -> 'circle', as in
``lab.experiment --phrase``) and compares, per step, each candidate quantity with its value ``k``
steps earlier: the relative change ``|X_t - X_(t-k)| / |X_t|`` (L2 over the latent, mean over
images). A quantity that changes little can be stored on one step and reused on the next ones.

- ``g-s``        the context minus the identity stream, as the host combines them (denoised x0)
- ``(g-s)/sigma`` the same divided by the step's noise level (what ``Guide`` stores)
- ``(g-u)/sigma`` the context stream's own guidance direction
- ``mask``       mean absolute change of the attention mask DeGu used
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch

from lab import model as lab_model
from lab import personalise
from lab.experiment import contexts, degu_settings
from lab.sampling import ETA, sample
from lab.subjects import SUBJECTS

LAGS = (1, 2, 3)


def relative_change(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Per image: |now - before| / |now| over all latent values."""
    return (now - before).flatten(1).norm(dim=1) / now.flatten(1).norm(dim=1).clamp_min(1e-12)


def drift(streams: Sequence[tuple[int, float, torch.Tensor, torch.Tensor, torch.Tensor]],
          masks: Sequence[torch.Tensor]) -> dict[str, dict[int, list[list[float]]]]:
    """quantity -> lag -> per step (list of per-image changes)."""
    quantities = {
        "g-s": [g - s for _, _, s, g, _ in streams],
        "(g-s)/sigma": [(g - s) / sigma for _, sigma, s, g, _ in streams],
        "(g-u)/sigma": [(g - u) / sigma for _, sigma, _, g, u in streams],
    }
    out: dict[str, dict[int, list[list[float]]]] = {}
    for name, values in quantities.items():
        out[name] = {lag: [relative_change(values[t], values[t - lag]).tolist() for t in range(lag, len(values))]
                     for lag in LAGS}
    out["mask"] = {lag: [(masks[t] - masks[t - lag]).abs().flatten(1).mean(dim=1).tolist()
                         for t in range(lag, len(masks))] for lag in LAGS}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(personalise.METHODS), choices=personalise.METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--split", choices=("dev", "test", "all"), default="test")
    parser.add_argument("--eta", type=float, default=ETA, help="DDIM eta: 1 ancestral (the lab's), 0 deterministic")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = lab_model.load()
    collected: dict[str, dict[int, list[list[float]]]] = {}
    for subject in SUBJECTS:
        cases = [(context, seed) for context in contexts(subject, args.split) for seed in args.seeds]
        prompts = [context.prompt(f"{subject.token} {subject.shape}") for context, _ in cases]
        settings = degu_settings(subject, subject=f"{subject.token} {subject.shape}", generic=subject.shape,
                                 context_refresh=1)
        for method in args.methods:
            model = personalise.load(subject, method, base)
            result = sample(model, prompts, [seed for _, seed in cases], settings, keep_maps=True, keep_streams=True,
                            eta=args.eta)
            for name, lags in drift(result.streams, result.masks).items():
                for lag, steps in lags.items():
                    into = collected.setdefault(name, {}).setdefault(lag, [[] for _ in steps])
                    for bucket, values in zip(into, steps, strict=True):
                        bucket.extend(values)
    steps = len(collected["g-s"][1]) + 1
    print(f"relative change over k steps (mean over {len(collected['g-s'][1][0])} images), step t of {steps}")
    for name, lags in collected.items():
        for lag, per_step in lags.items():
            cells = " ".join(f"{statistics.fmean(v):5.2f}" for v in per_step)
            print(f"{name:<12} k={lag}  mean {statistics.fmean(statistics.fmean(v) for v in per_step):.3f} | {cells}")


if __name__ == "__main__":
    main()
