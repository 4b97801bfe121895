"""The quality experiment: does mixing identity and context guidance per pixel beat mixing globally?

    python -m lab.experiment                                # every method x subject, test split
    python -m lab.experiment --methods lora --seeds 0 1     # a subset
    python -m lab.experiment --subjects sks:circle:purple:striped:teal:checkered --split dev

For every personalisation method x subject, prompts put the subject into contexts it was never
trained in (other backgrounds and textures, a second object), over several seeds, and each variant
is scored by the judge (``lab.scoring``):

- ``prompt``   plain CFG on the prompt as written (the personalised model alone)
- ``generic``  plain CFG on the generic prompt (the subject word removed)
- ``global M`` DeGu with the full mask at a constant M (balance M - 1): the global mix that
               subject-agnostic guidance and dual CFG give; M = 1 is ``prompt``, M = 0 ``generic``
- ``difference`` / ``attention``  DeGu's spatial masks at the defaults; ``attention b=..`` sweeps
               the balance, ``attention id=..`` the identity scale
- ``oracle region``  DeGu at the defaults with the subject's region (the judge's reading of the
               ``attention`` variant's images) as the mask at every step: what a perfect mask would
               give, the ceiling for any mask estimate (``--no-oracle`` leaves it out); with
               ``--oracle-phases`` also ``oracle first half`` / ``oracle second half``: that region for
               the first or the last half of the steps, the estimated mask for the rest (which phase
               of sampling a precise mask matters in)
- ``layout pass``  (``--layout-pass``) a second run from the same noise with the hard mask of where
               the ``attention`` run put the subject (``lib_degu.mask.layout_mask``) at every step:
               DeGu knowing the layout from step 0, at twice DeGu's cost (the WebUI setting ``layout_pass``)

The table gives mean fidelity, editability and mask IoU/AUROC (against the subject's region in the
image DeGu generated). ``advantage`` is the attention mask's fidelity minus the global mix's
fidelity at the same editability, on the global points' Pareto front (``global_fidelity_at``), with
its bootstrap standard error over the pair's images (``advantage_error``; printed as ``± e``).
The oracle's and the layout pass's advantages are also printed minus the defaults', on the same
draw of images (``change_against_defaults``): whether they beat the defaults, not only the global mix.
The last line is for scripts: ``quality iou=<mean IoU at the defaults> advantage=<mean advantage>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from lab import judge as lab_judge
from lab import model as lab_model
from lab import personalise, scenes, scoring
from lab.sampling import CFG_SCALE, ETA, STEPS, sample
from lab.scoring import Context
from lab.subjects import SUBJECTS, Subject
from lib_degu.settings import DeGuSettings

GLOBAL_LEVELS = (0.75, 0.5, 0.25)
BALANCE_SWEEP = (-0.5, -0.25, 0.25, 0.5)
IDENTITY_SWEEP = (1.5,)
STEP_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ORACLE = "oracle region"
LAYOUT_PASS = "layout pass"
ORACLE_PHASES = {"oracle first half": range(STEPS // 2), "oracle second half": range(STEPS // 2, STEPS)}
EXTRA_VARIANTS = (ORACLE, *ORACLE_PHASES, LAYOUT_PASS)  # their advantages are printed beside the defaults'


def contexts(subject: Subject, split: str) -> list[Context]:
    """Eight held-out contexts: never the subject's training background nor its texture; half of
    them with a second object of another shape. Four are the dev split (for choosing defaults),
    four the test split (for reporting); each split mixes textures and has two second objects.
    """
    backgrounds = [b for b in scenes.BACKGROUND_COLOURS if b != subject.background]
    textures = [t for t in scenes.TEXTURES if t != subject.texture]
    other_shapes = [s for s in scenes.SHAPES if s != subject.shape]
    other_colours = [c for c in scenes.OBJECT_COLOURS if c != subject.colour]
    chosen = []
    for i in range(8):
        other = None
        if i % 4 in (2, 3):
            other = scenes.Thing(shape=other_shapes[i % len(other_shapes)],
                                 colour=other_colours[i % len(other_colours)])
        chosen.append(Context(backgrounds[i % len(backgrounds)], textures[(i + i // len(backgrounds)) % 2], other))
    if split == "all":
        return chosen
    keep = (0, 3) if split == "dev" else (1, 2)
    return [c for i, c in enumerate(chosen) if i % 4 in keep]


def degu_settings(who: Subject, **changes: object) -> DeGuSettings:
    """DeGu on, subject token ``who.token`` removed for the generic prompt, then ``changes``."""
    return DeGuSettings.from_dict({"enabled": True, "subject": who.token, "generic": "", **changes})


@dataclass
class Row:
    method: str
    subject: str
    variant: str
    fidelity: float
    editability: float
    iou: float | None = None
    auroc: float | None = None
    coverage: float | None = None  # mean of the final mask: 1.0 is the global "all identity"
    iou_by_step: dict[str, float] | None = None
    cost: float | None = None  # model rows evaluated / plain CFG's rows (prompt + uncond per step)
    # Per image, in the order of the pair's cases (every variant of a pair runs the same cases): what
    # ``advantage_error`` resamples.
    fidelities: list[float] | None = None
    editabilities: list[float] | None = None


def run_variant(
    model: lab_model.Miniature,
    judge: lab_judge.Judge,
    subject: Subject,
    cases: Sequence[tuple[Context, int]],
    settings: DeGuSettings | None,
    *,
    generic_prompt: bool = False,
    eta: float = ETA,
    cfg_scale: float = CFG_SCALE,
    fixed_mask: torch.Tensor | None = None,
    fixed_steps: range | None = None,
    layout: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | list[torch.Tensor] | float | None]:
    words = subject.shape if generic_prompt else f"{subject.token} {subject.shape}"
    prompts = [context.prompt(words) for context, _ in cases]
    result = sample(model, prompts, [seed for _, seed in cases], settings, keep_maps=settings is not None, eta=eta,
                    cfg_scale=cfg_scale, fixed_mask=fixed_mask, fixed_steps=fixed_steps, layout=layout)
    reading = lab_judge.read(judge, result.images)
    return {
        "fidelity": scoring.fidelity(reading, subject),
        "editability": scoring.editability(reading, [context for context, _ in cases]),
        "region": scoring.region_at_latent(scoring.subject_region(reading, subject), lab_model.LATENT_SIZE),
        "masks": result.masks,
        "images": result.images,
        "cost": result.model_rows / (2 * STEPS * len(cases)),
        "layout": result.layout,
    }


def _mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def summarise(method: str, subject: Subject, variant: str, out: dict) -> Row:
    row = Row(method, subject.token, variant, _mean(out["fidelity"]), _mean(out["editability"]), cost=out["cost"],
              fidelities=out["fidelity"].tolist(), editabilities=out["editability"].tolist())
    masks = out["masks"]
    if masks:
        final, region = masks[-1], out["region"]
        row.iou = _mean(scoring.iou(final, region))
        row.auroc = _mean(scoring.auroc(final[:, 0], region))
        row.coverage = float(final.mean())
        row.iou_by_step = {
            f"{fraction:g}": _mean(scoring.iou(masks[max(0, round(fraction * len(masks)) - 1)], region))
            for fraction in STEP_FRACTIONS
        }
    return row


def global_fidelity_at(rows: Sequence[Row], editability: float) -> float:
    """The global mix's fidelity at ``editability``, on its measured Pareto front.

    The front keeps the global points that no more editable point beats in fidelity; between them
    the fidelity is linear in editability; beyond the ends it is the end's. A mask that is nearly
    constant lands next to a global point and gets ≈ 0, however narrow the editability axis is.
    """
    front: list[tuple[float, float]] = []
    for r in sorted(rows, key=lambda r: -r.editability):
        if not front or r.fidelity > front[-1][1]:
            front.append((r.editability, r.fidelity))
    front.reverse()  # least editable (most faithful) first
    if editability <= front[0][0]:
        return front[0][1]
    for (e0, f0), (e1, f1) in zip(front, front[1:], strict=False):
        if editability <= e1:
            return f0 + (f1 - f0) * (editability - e0) / (e1 - e0)
    return front[-1][1]


def advantage(rows: Sequence[Row], variant: str = "attention") -> float:
    curve = [r for r in rows if r.variant in ("prompt", "generic") or r.variant.startswith("global")]
    point = next(r for r in rows if r.variant == variant)
    return point.fidelity - global_fidelity_at(curve, point.editability)


def resampled_advantages(rows: Sequence[Row], variant: str = "attention", resamples: int = 400,
                         seed: int = 0) -> torch.Tensor:
    """``advantage`` over bootstrap resamples of the pair's images (contexts x seeds, with
    replacement): (resamples,). The same draw for every variant of the pair, and for the same seed
    the same draw for any run with the same number of images (so two runs of one pair compare
    image for image: ``compare``)."""
    kept = [r for r in rows if r.fidelities is not None and r.editabilities is not None]
    if len(kept) != len(rows):
        raise ValueError("rows without per-image scores (a --json written before they were kept): rerun it")
    fidelity = torch.tensor([r.fidelities for r in kept], dtype=torch.float64)
    editability = torch.tensor([r.editabilities for r in kept], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(fidelity.shape[1], (resamples, fidelity.shape[1]), generator=generator)
    fidelity_means = fidelity[:, draws].nanmean(dim=-1)  # (rows, resamples)
    editability_means = editability[:, draws].nanmean(dim=-1)
    values = []
    for k in range(resamples):
        resampled = [replace(r, fidelity=float(fidelity_means[i, k]), editability=float(editability_means[i, k]))
                     for i, r in enumerate(kept)]
        values.append(advantage(resampled, variant))
    return torch.tensor(values, dtype=torch.float64)


def advantage_error(rows: Sequence[Row], variant: str = "attention", resamples: int = 400, seed: int = 0) -> float:
    """The bootstrap standard error of ``advantage``.

    The global front is steep (a little editability buys much fidelity), so an advantage moves a lot
    with the draw of images; differences between settings smaller than this are noise.
    """
    return float(resampled_advantages(rows, variant, resamples, seed).std())


def change_against_defaults(rows: Sequence[Row], variant: str, resamples: int = 400) -> tuple[float, float]:
    """One pair's ``variant`` advantage minus the defaults' (``attention``) in the same run, and the
    standard error of that difference: both resampled with the same draw of images, so what the two
    variants' images share (hard contexts, lucky seeds) cancels."""
    difference = advantage(rows, variant) - advantage(rows)
    spread = resampled_advantages(rows, variant, resamples) - resampled_advantages(rows, "attention", resamples)
    return difference, float(spread.std())


def compare(rows: Sequence[Row], baseline: Sequence[Row], variant: str = "attention") -> list[tuple[str, float, float]]:
    """Per (method, subject) in both, and ``mean`` last: the advantage minus the baseline run's, and
    its standard error, both runs resampled with the same draw of images (paired; the images of two
    settings differ, so measured it cancels little). The runs must have the same cases (split, seeds)
    for each pair."""

    def pairs(group: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
        out: dict[tuple[str, str], list[Row]] = {}
        for r in group:
            out.setdefault((r.method, r.subject), []).append(r)
        return out

    ours, theirs = pairs(rows), pairs(baseline)
    result = []
    differences, variances = [], []
    for key in [k for k in ours if k in theirs]:
        ours_resampled, theirs_resampled = resampled_advantages(ours[key], variant), resampled_advantages(
            theirs[key], variant)
        counts = {len(r.fidelities or ()) for r in [*ours[key], *theirs[key]]}
        if len(counts) != 1:
            raise ValueError(f"{key}: the runs have different cases ({sorted(counts)} images)")
        difference = advantage(ours[key], variant) - advantage(theirs[key], variant)
        spread = ours_resampled - theirs_resampled
        differences.append(difference)
        variances.append(float(spread.var()))
        result.append((f"{key[0]} {key[1]}", difference, float(spread.std())))
    if differences:
        result.append(("mean", statistics.fmean(differences), sum(variances) ** 0.5 / len(variances)))
    return result


def run_pair(
    model: lab_model.Miniature, judge: lab_judge.Judge, method: str, subject: Subject,
    cases: Sequence[tuple[Context, int]], *, sweep: bool = True, overrides: Mapping[str, object] | None = None,
    phrase: bool = False, refresh: Sequence[int] = (), eta: float = ETA, cfg_scale: float = CFG_SCALE,
    oracle: bool = True,
    oracle_phases: bool = False, layout_pass: bool = False,
) -> list[Row]:
    """Every variant for one personalised model. ``overrides`` replace DeGu's defaults (mask settings
    to try) in the DeGu variants, under the variant's own changes. ``phrase``: the subject field holds
    the token and the class word ("sks circle" -> "circle"): the same generic prompt, and the mask
    reads the attention of both words. ``oracle``: also DeGu with the subject's judged region in the
    attention variant's images as the mask at every step (``ORACLE``): what a perfect mask gives;
    ``oracle_phases``: also that mask in one half of the steps only (``ORACLE_PHASES``); ``layout_pass``:
    also a second run with the attention run's layout mask (``LAYOUT_PASS``), costed as both runs."""

    words = {"subject": f"{subject.token} {subject.shape}", "generic": subject.shape} if phrase else {}
    sampler = {"eta": eta, "cfg_scale": cfg_scale}

    def degu(**changes: object) -> DeGuSettings:
        return degu_settings(subject, **{**words, **(overrides or {}), **changes})

    variants: list[tuple[str, DeGuSettings | None, bool]] = [
        ("prompt", None, False),
        ("generic", None, True),
        # The global mix is the competitor (dual CFG, subject-agnostic guidance): exact, every step.
        *((f"global {m:g}", degu(mask_source="full", balance=m - 1, context_refresh=1), False) for m in GLOBAL_LEVELS),
        ("difference", degu(mask_source="difference"), False),
        ("attention", degu(), False),
    ]
    if sweep:
        variants += [(f"attention b={b:g}", degu(balance=b), False) for b in BALANCE_SWEEP]
        variants += [(f"attention id={a:g}", degu(identity_scale=a), False) for a in IDENTITY_SWEEP]
    # N = 1 first: the baseline the others are compared with.
    refresh = sorted({1, *refresh}) if refresh else []
    variants += [(f"attention refresh={n}", degu(context_refresh=n), False) for n in refresh]
    rows = []
    for name, settings, generic in variants:
        out = run_variant(model, judge, subject, cases, settings, generic_prompt=generic, **sampler)
        rows.append(summarise(method, subject, name, out))
        if name == "attention" and oracle:
            region = out["region"][:, None].float()
            rows.append(summarise(method, subject, ORACLE, run_variant(
                model, judge, subject, cases, settings, **sampler, fixed_mask=region)))
            for phase, steps in ORACLE_PHASES.items() if oracle_phases else ():
                rows.append(summarise(method, subject, phase, run_variant(
                    model, judge, subject, cases, settings, **sampler, fixed_mask=region, fixed_steps=steps)))
        if name == "attention" and layout_pass:
            second = run_variant(model, judge, subject, cases, settings, **sampler, layout=out["layout"])
            rows.append(summarise(method, subject, LAYOUT_PASS, {**second, "cost": out["cost"] + second["cost"]}))
    return rows


def mean_with_error(values: Sequence[float], errors: Sequence[float]) -> str:
    """``+0.053 ± 0.021``: the mean over pairs; pairs are independent models and noise draws, so the
    mean's error adds theirs in quadrature."""
    return f"{statistics.fmean(values):+.3f} ± {sum(e * e for e in errors) ** 0.5 / len(errors):.3f}"


def table(rows: Sequence[Row]) -> str:
    """Per variant, the mean over method x subject pairs."""
    names = list(dict.fromkeys(r.variant for r in rows))
    lines = [f"{'variant':<18} {'fidelity':>8} {'edit':>6} {'IoU':>6} {'AUROC':>6} {'cover':>6}"]
    for name in names:
        group = [r for r in rows if r.variant == name]

        def mean(key: str, group: list[Row] = group) -> str:
            values = [getattr(r, key) for r in group if getattr(r, key) is not None]
            return f"{statistics.fmean(values):.3f}" if values else "-"

        lines.append(f"{name:<18} {mean('fidelity'):>8} {mean('editability'):>6} {mean('iou'):>6} "
                     f"{mean('auroc'):>6} {mean('coverage'):>6}")
    return "\n".join(lines)


def refresh_table(rows: Sequence[Row]) -> str:
    """Per context-refresh interval N: the cost against plain CFG and the change against full DeGu
    (N = 1, the generic rows on every step), relative for fidelity/editability, absolute for IoU.
    ``attention`` is the defaults (N = DeGuSettings().context_refresh)."""
    by_key = {(r.method, r.subject, r.variant): r for r in rows}
    names = [name for name in dict.fromkeys(r.variant for r in rows) if name.startswith("attention refresh=")]
    baseline = "attention refresh=1"
    lines = [f"{'variant':<22} {'cost':>5} {'fidelity':>9} {'edit':>7} {'IoU':>7}   (change vs every step)"]
    for name in [*names, "attention"]:
        group = [r for r in rows if r.variant == name]
        full = [by_key[r.method, r.subject, baseline] for r in group]
        fidelity = statistics.fmean(r.fidelity for r in group) / statistics.fmean(f.fidelity for f in full) - 1
        edit = statistics.fmean(r.editability for r in group) / statistics.fmean(f.editability for f in full) - 1
        iou = statistics.fmean(r.iou for r in group) - statistics.fmean(f.iou for f in full)
        cost = statistics.fmean(r.cost for r in group)
        lines.append(f"{name:<22} {cost:>4.2f}x {fidelity:>+8.1%} {edit:>+6.1%} {iou:>+7.3f}")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, eta: float = ETA, cfg_scale: float = CFG_SCALE) -> None:
    """Fidelity vs editability, mean over method x subject: the global mix and the attention mask's
    balance sweep as curves (both end at plain CFG on the prompt and on the generic prompt); the
    difference mask, the defaults, the layout pass and the oracle as points where they ran; a title
    that names the sampler and the CFG scale when they are not the lab's (``eta``, ``cfg_scale``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def point(name: str) -> tuple[float, float]:
        group = [r for r in rows if r.variant == name]
        return statistics.fmean(r.editability for r in group), statistics.fmean(r.fidelity for r in group)

    names = set(r.variant for r in rows)
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=110)
    curves = {
        "global mix (full mask, constant M)":
            ["prompt"] + [f"global {m:g}" for m in GLOBAL_LEVELS] + ["generic"],
        "DeGu attention mask (balance sweep)":
            ["prompt"] + [f"attention b={b:g}" for b in sorted(BALANCE_SWEEP, reverse=True) if b > 0]
            + ["attention"] + [f"attention b={b:g}" for b in sorted(BALANCE_SWEEP, reverse=True) if b < 0]
            + ["generic"],
    }
    for label, variants in curves.items():
        xs, ys = zip(*(point(v) for v in variants if v in names), strict=True)
        axes.plot(xs, ys, marker="o", label=label)
    markers = (("difference", "s", "DeGu difference mask"), ("attention", "*", "attention, defaults"),
               (LAYOUT_PASS, "D", "layout pass (2x time)"), (ORACLE, "X", "oracle region (a perfect mask)"))
    for name, marker, label in markers:
        if name in names:
            axes.plot(*point(name), marker=marker, markersize=12, linestyle="none", label=label)
    for name, text in (("prompt", "plain CFG, prompt"), ("generic", "plain CFG, generic prompt")):
        axes.annotate(text, point(name), textcoords="offset points", xytext=(6, 6), fontsize=8)
    axes.set_xlabel("editability (context as prompted)")
    axes.set_ylabel("fidelity (subject's appearance)")
    pairs = sorted({(r.method, r.subject) for r in rows})
    over = f"{pairs[0][0]} {pairs[0][1]}" if len(pairs) == 1 else "mean over methods x subjects"
    unlike_the_lab = [
        *(() if eta == ETA else ("deterministic sampler" if eta == 0 else f"DDIM eta {eta:g}",)),
        *(() if cfg_scale == CFG_SCALE else (f"CFG {cfg_scale:g}",)),
    ]
    title = [f"Held-out contexts, {over}"]
    if unlike_the_lab:
        title.append(", ".join(unlike_the_lab))
    axes.set_title("\n".join(title))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(personalise.METHODS), choices=personalise.METHODS)
    parser.add_argument("--subjects", nargs="+", type=Subject.parse, default=list(SUBJECTS),
                        help="token:shape:colour:striped|solid:background:texture (models must exist)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--split", choices=("dev", "test", "all"), default="test")
    parser.add_argument("--no-sweep", action="store_true", help="only the global curve and the defaults")
    parser.add_argument("--no-oracle", action="store_true", help="leave out the oracle-region variant")
    parser.add_argument("--layout-pass", action="store_true",
                        help="also a second run from the same noise with the hard mask of where the attention "
                             "run put the subject, at every step")
    parser.add_argument("--oracle-phases", action="store_true",
                        help="also the oracle region in the first / the second half of the steps only")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="DeGu settings to use instead of the defaults, e.g. threshold=0.6 ema=0")
    parser.add_argument("--phrase", action="store_true",
                        help="subject field 'sks circle', generic 'circle' (instead of 'sks', removed)")
    parser.add_argument("--refresh", nargs="+", type=int, default=[], metavar="N",
                        help="also run the defaults with 'context refresh every N steps' (and N = 1, the "
                             "baseline) and report cost vs quality change")
    parser.add_argument("--eta", type=float, default=ETA,
                        help="DDIM eta of the sampler: 1 ancestral (the lab's default), 0 deterministic")
    parser.add_argument("--cfg", type=float, default=CFG_SCALE, help=f"CFG scale (the lab's default {CFG_SCALE:g})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--baseline", type=Path,
                        help="a --json of an earlier run with the same split and seeds: print the change in "
                             "advantage against it, pair by pair, with paired standard errors")
    parser.add_argument("--plot", type=Path, help="write the fidelity-vs-editability plot here (needs matplotlib)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.set)  # checked and coerced by the settings schema
    started = time.perf_counter()
    base, judge = lab_model.load(), lab_judge.load()
    rows: list[Row] = []
    advantages: list[float] = []
    errors: list[float] = []
    extras: dict[str, list[tuple[float, float]]] = {}  # per variant of EXTRA_VARIANTS: (advantage, error) per pair
    changes: dict[str, list[tuple[float, float]]] = {}  # the same variants minus the defaults, paired
    for subject in args.subjects:
        cases = [(context, seed) for context in contexts(subject, args.split) for seed in args.seeds]
        for method in args.methods:
            pair = run_pair(personalise.load(subject, method, base), judge, method, subject, cases,
                            sweep=not args.no_sweep, overrides=overrides, phrase=args.phrase, refresh=args.refresh,
                            eta=args.eta, cfg_scale=args.cfg, oracle=not args.no_oracle,
                            oracle_phases=args.oracle_phases, layout_pass=args.layout_pass)
            rows += pair
            advantages.append(advantage(pair))
            errors.append(advantage_error(pair))
            attention = next(r for r in pair if r.variant == "attention")
            present = [name for name in EXTRA_VARIANTS if any(r.variant == name for r in pair)]
            for name in present:
                extras.setdefault(name, []).append((advantage(pair, name), advantage_error(pair, name)))
                changes.setdefault(name, []).append(change_against_defaults(pair, name))
            oracle = "".join(f"  {name} {extras[name][-1][0]:+.3f} ± {extras[name][-1][1]:.3f}" for name in present)
            print(f"{method:<10} {subject.token:<5} advantage {advantages[-1]:+.3f} ± {errors[-1]:.3f}  "
                  f"IoU {attention.iou:.3f}  coverage {attention.coverage:.2f}{oracle}", flush=True)
    print()
    print(table(rows))
    if args.refresh:
        print()
        print(refresh_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.plot:
        plot(rows, args.plot, args.eta, args.cfg)
    if args.baseline:
        baseline = [Row(**r) for r in json.loads(args.baseline.read_text())]
        print(f"\nadvantage minus {args.baseline}'s (paired bootstrap standard error; lab.compare)")
        for name, difference, error in compare(rows, baseline):
            print(f"{name:<16} {difference:+.3f} ± {error:.3f}")
    iou = statistics.fmean(r.iou for r in rows if r.variant == "attention")
    print(f"({len(rows)} rows, {time.perf_counter() - started:.0f} s)")
    print(f"advantage {mean_with_error(advantages, errors)} (bootstrap standard error over images; per pair above)")
    for name, measured in extras.items():
        if len(measured) == len(advantages):
            gains, spread = zip(*measured, strict=True)
            differences, difference_errors = zip(*changes[name], strict=True)
            print(f"{name} advantage {mean_with_error(gains, spread)}; minus the defaults' "
                  f"{mean_with_error(differences, difference_errors)} (paired)")
    print(f"quality iou={iou:.3f} advantage={statistics.fmean(advantages):.3f}")


if __name__ == "__main__":
    main()
