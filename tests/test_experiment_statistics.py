"""The quality experiment's arithmetic, on made-up rows (no model runs): the advantage's error bar."""

from __future__ import annotations

import statistics

import pytest
import torch

from lab.experiment import Row, advantage, advantage_error, change_against_defaults, compare


def _row(variant: str, fidelities: list[float], editabilities: list[float]) -> Row:
    return Row("lora", "sks", variant, statistics.fmean(fidelities), statistics.fmean(editabilities),
               fidelities=fidelities, editabilities=editabilities)


def _noisy(mean: float, spread: float, n: int, seed: int) -> list[float]:
    return (mean + spread * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).tolist()


def _global_curve(n: int) -> list[Row]:
    """Prompt, three global mixes and the generic prompt, every image scored alike (a fixed front)."""
    points = {"prompt": (0.5, 0.90), "global 0.75": (0.4, 0.92), "global 0.5": (0.3, 0.94),
              "global 0.25": (0.1, 0.95), "generic": (0.0, 0.96)}
    return [_row(name, [f] * n, [e] * n) for name, (f, e) in points.items()]


def test_a_mask_that_lands_on_the_global_curve_image_for_image_has_no_error() -> None:
    # The same draw of images for every variant: a point scored exactly like a global point, image
    # for image, sits on the front in every resample. Drawing per variant would give it an error.
    n = 48
    fidelities, editabilities = _noisy(0.3, 0.2, n, 1), _noisy(0.94, 0.03, n, 2)
    rows = [r for r in _global_curve(n) if r.variant != "global 0.5"]
    rows += [_row("global 0.5", fidelities, editabilities), _row("attention", fidelities, editabilities)]
    assert advantage(rows) == 0.0
    assert advantage_error(rows) < 1e-9  # rounding in the interpolation


def test_on_a_fixed_front_the_error_is_the_standard_error_of_the_masks_fidelity() -> None:
    n, spread = 200, 0.3
    fidelities = _noisy(0.45, spread, n, 3)
    rows = [*_global_curve(n), _row("attention", fidelities, [0.97] * n)]  # beyond the front's end: flat
    expected = statistics.stdev(fidelities) / n**0.5
    assert abs(advantage_error(rows, resamples=2000) - expected) < 0.1 * expected


def test_the_error_grows_with_the_spread_of_the_images() -> None:
    n = 48
    rows_for = {spread: [*_global_curve(n), _row("attention", _noisy(0.45, spread, n, 4), _noisy(0.93, 0.01, n, 5))]
                for spread in (0.05, 0.3)}
    assert advantage_error(rows_for[0.3]) > 3 * advantage_error(rows_for[0.05])


def _run(subject: str, gain: float, n: int = 48) -> list[Row]:
    rows = [*_global_curve(n), _row("attention", _noisy(0.45 + gain, 0.3, n, 6), _noisy(0.97, 0.01, n, 7))]
    return [Row(**{**r.__dict__, "subject": subject}) for r in rows]


def test_a_run_compared_with_itself_differs_by_nothing_not_even_noise() -> None:
    # Paired: both runs resampled with the same draw of images. Unpaired draws would leave an error
    # of about the advantage's own (0.04 here).
    run = _run("sks", 0.0) + _run("zkw", 0.0)
    assert advantage_error(_run("sks", 0.0)) > 0.02
    for name, difference, error in compare(run, run):
        assert (difference, error) == (0.0, 0.0), name


def test_a_gain_on_every_image_is_measured_as_that_gain() -> None:
    # Past the front's most editable end the front is flat: a fidelity gain is an advantage gain.
    result = dict((name, (difference, error)) for name, difference, error in compare(
        _run("sks", 0.1) + _run("zkw", 0.2), _run("sks", 0.0) + _run("zkw", 0.0)))
    assert result["lora sks"] == pytest.approx((0.1, 0.0), abs=1e-9)
    assert result["lora zkw"] == pytest.approx((0.2, 0.0), abs=1e-9)
    assert result["mean"] == pytest.approx((0.15, 0.0), abs=1e-9)


def test_runs_with_different_images_are_not_compared() -> None:
    with pytest.raises(ValueError, match="different cases"):
        compare(_run("sks", 0.0, n=48), _run("sks", 0.0, n=24))


def test_rows_without_per_image_scores_are_refused_with_a_reason() -> None:
    old = [Row(**{**r.__dict__, "fidelities": None, "editabilities": None}) for r in _run("sks", 0.0)]
    with pytest.raises(ValueError, match="per-image scores"):
        compare(old, _run("sks", 0.0))


def test_a_variant_is_compared_with_the_defaults_image_for_image() -> None:
    # The layout pass's second pass starts from the first pass's noise, so its images share the
    # defaults' contexts and seeds: a gain on every image is that gain with no error, and scores
    # that follow the defaults' image for image cancel far below either advantage's own error.
    n = 48
    defaults = _run("sks", 0.0, n)
    attention = next(r for r in defaults if r.variant == "attention")
    gained = _row("layout pass", [f + 0.1 for f in attention.fidelities], attention.editabilities)
    assert change_against_defaults([*defaults, gained], "layout pass") == pytest.approx((0.1, 0.0), abs=1e-9)
    wobble = _noisy(0.0, 0.02, n, 8)
    similar = _row("layout pass", [f + w for f, w in zip(attention.fidelities, wobble, strict=True)],
                   attention.editabilities)
    rows = [*defaults, similar]
    _, error = change_against_defaults(rows, "layout pass")
    assert error < 0.25 * advantage_error(rows, "layout pass")
