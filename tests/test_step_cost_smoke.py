"""Smoke test of the step-cost benchmark: its --quick path (tiny models, one latent size) runs every
variant through the simulated A1111 host in-process and ends with a parseable ``ratio=`` line."""

from __future__ import annotations

import contextlib
import io
import re

from lab import step_cost


def test_quick_run_ends_with_a_parseable_ratio_line():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = step_cost.main(["--quick", "--sizes", "8"])
    text = out.getvalue()
    assert code == 0, text
    last = text.strip().splitlines()[-1]
    match = re.fullmatch(r"ratio=(\d+(?:\.\d+)?)", last)
    assert match, last
    assert float(match.group(1)) > 0
    assert "attention mask" in text and "no-uncond" in text and "window 0–50%" in text
    assert "context refresh every 3 (default)" in text and "generic rows skipped" in text
    assert "DiT step" in text and "tiny SD3.5" in text and "tiny Flux" in text
