"""DeGu on models that have learned where things are (the committed miniatures in lab/models).

What the project exists for, pinned on the quality experiment's test split (held-out contexts, its
four seeds, the recommended subject field "sks circle" -> "circle"; the global-mix levels and the
defaults, not the sweeps): at the defaults the attention
mask finds the subject, and mixing identity and context guidance per pixel gives more fidelity than
any global mix that is as editable. The balance's end points reproduce plain CFG on the prompt and
on the generic prompt on the trained model. Floors sit below what the full experiment measures
(README, "Does it work?"); a constant mask fails them (checked by making the attention map flat).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from lab import experiment, personalise
from lab import judge as lab_judge
from lab import model as lab_model
from lab.sampling import sample
from lab.subjects import SUBJECTS

SEEDS = (0, 1, 2, 3)  # the experiment's seeds: these tests see its test-split figures
LEARNED = SUBJECTS[0]  # the subject all three methods learned (lab/models/README.md)
IOU_FLOOR = 0.3  # measured 0.39-0.48 on it; a constant mask scores the subject's share, ~0.2
ADVANTAGE_FLOOR = 0.05  # measured mean 0.104; a constant mask is a global mix: ~0
TI_ADVANTAGE_FLOOR = 0.1  # measured 0.27: TI is the method whose prompt gives up context


@pytest.fixture(scope="module")
def base() -> lab_model.Miniature:
    return lab_model.load()


@pytest.fixture(scope="module")
def rows(base: lab_model.Miniature) -> dict[tuple[str, str], list[experiment.Row]]:
    """Per (method, subject): the global curve, the difference and the attention mask."""
    judge = lab_judge.load()
    out = {}
    for subject in SUBJECTS:
        cases = [(c, s) for c in experiment.contexts(subject, "test") for s in SEEDS]
        for method in personalise.METHODS:
            model = personalise.load(subject, method, base)
            out[method, subject.token] = experiment.run_pair(
                model, judge, method, subject, cases, sweep=False, phrase=True)
    return out


def _attention(pair: list[experiment.Row]) -> experiment.Row:
    return next(r for r in pair if r.variant == "attention")


@pytest.mark.parametrize("method", personalise.METHODS)
def test_the_attention_mask_localises_a_learned_subject_at_the_defaults(rows, method):
    attention = _attention(rows[method, LEARNED.token])
    assert attention.iou >= IOU_FLOOR, attention
    assert attention.auroc >= 0.75, attention


def test_the_attention_mask_beats_the_global_mix_at_equal_editability(rows):
    advantages = {key: experiment.advantage(pair) for key, pair in rows.items()}
    assert statistics.fmean(advantages.values()) >= ADVANTAGE_FLOOR, advantages
    ti = [value for (method, _), value in advantages.items() if method == "ti"]
    assert statistics.fmean(ti) >= TI_ADVANTAGE_FLOOR, advantages


@pytest.mark.parametrize(("balance", "generic"), [(1.0, False), (-1.0, True)], ids=["plus-one", "minus-one"])
def test_balance_end_points_are_plain_cfg_on_the_prompt_and_the_generic_prompt(base, balance, generic):
    model = personalise.load(LEARNED, "ti", base)
    contexts = experiment.contexts(LEARNED, "test")[:2]
    seeds = [0, 1]
    prompts = [c.prompt(f"{LEARNED.token} {LEARNED.shape}") for c in contexts]
    plain_prompts = [c.prompt(LEARNED.shape) for c in contexts] if generic else prompts
    plain = sample(model, plain_prompts, seeds).images
    degu = sample(model, prompts, seeds, experiment.degu_settings(LEARNED, balance=balance)).images
    torch.testing.assert_close(degu, plain, atol=1e-5, rtol=0)
    # At balance 0 the trained model's mask is neither end point.
    middle = sample(model, prompts, seeds, experiment.degu_settings(LEARNED)).images
    assert (middle - plain).abs().max() > 0.1
