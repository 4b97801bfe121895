"""Per-step logic the adapters call: the window gate and the guided output / delta."""

import torch

from lib_degu.guidance import cfg
from lib_degu.settings import DeGuSettings
from lib_degu.step import Guide, is_active


def test_window_gate():
    s = DeGuSettings(enabled=True, start=0.0, end=0.5)
    assert is_active(s, 0.0) and is_active(s, 0.49) and not is_active(s, 0.5)
    full = DeGuSettings(enabled=True)
    assert is_active(full, 0.0) and is_active(full, 0.999)
    assert not is_active(DeGuSettings(enabled=False), 0.2)
    late = DeGuSettings(enabled=True, start=0.3, end=1.0)
    assert not is_active(late, 0.29) and is_active(late, 0.3)


def _preds(seed=0, shape=(2, 4, 8, 8)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(3)]


def test_full_mask_balance_and_unit_scales_give_zero_delta():
    u, s, g = _preds()
    guide = Guide(DeGuSettings(enabled=True, mask_source="full"))
    assert torch.equal(guide.delta(u, s, g, cfg_scale=7.0), torch.zeros_like(s))
    guide = Guide(DeGuSettings(enabled=True, mask_source="attention", balance=1.0))
    assert torch.equal(guide.delta(u, s, g, cfg_scale=7.0), torch.zeros_like(s))
    assert torch.equal(guide.delta(None, s, g, cfg_scale=1.0), torch.zeros_like(s))


def test_balance_minus_one_is_generic_cfg():
    u, s, g = _preds()
    guide = Guide(DeGuSettings(enabled=True, balance=-1.0, mask_source="difference"))
    out = guide(u, s, g, cfg_scale=5.0)
    assert torch.equal(out.output, cfg(u, g, 5.0))
    assert out.source == "difference"


def test_attention_source_falls_back_to_difference_without_a_map():
    u, s, g = _preds()
    guide = Guide(DeGuSettings(enabled=True, mask_source="attention"))
    assert guide(u, s, g, cfg_scale=5.0).source == "difference"
    attention = torch.rand(2, 4, 4)
    result = guide(u, s, g, cfg_scale=5.0, attention=attention)
    assert result.source == "attention" and result.mask.shape == (2, 1, 8, 8)
    assert guide.sources_used == {"attention", "difference"}


def test_mask_tracks_where_subject_changes_the_prediction():
    u, s, _ = _preds(shape=(1, 4, 16, 16))
    g = s.clone()
    g[..., 4:8, 4:8] += 3.0  # the subject only matters in this square
    guide = Guide(DeGuSettings(enabled=True, mask_source="difference", blur=0.0, ema=0.0))
    m = guide(u, s, g, cfg_scale=5.0).mask[0, 0]
    assert m[5, 5] > 0.9 and m[12, 12] < 0.1


def test_non_finite_prediction_steps_aside_for_that_image_and_is_counted():
    u, s, g = _preds()
    g[1, 0, 0, 0] = float("nan")
    guide = Guide(DeGuSettings(enabled=True, mask_source="full", identity_scale=1.5))
    delta = guide.delta(u, s, g, cfg_scale=7.0)
    assert torch.equal(delta[1], torch.zeros_like(delta[1]))
    assert torch.isfinite(delta).all() and delta[0].abs().sum() > 0
    assert int(guide.nonfinite_steps) == 1


def test_one_non_finite_step_does_not_poison_the_later_steps_through_the_mask_ema():
    u, s, g = _preds()
    guide = Guide(DeGuSettings(enabled=True, mask_source="difference", ema=0.5))
    bad = g.clone()
    bad[1, 0, 0, 0] = float("nan")
    guide.delta(u, s, bad, cfg_scale=7.0)
    delta = guide.delta(u, s, g, cfg_scale=7.0)  # finite again: DeGu guides this image again
    assert torch.isfinite(delta).all() and delta[1].abs().sum() > 0
    assert int(guide.nonfinite_steps) == 1


# -- which calls run the generic rows (issue 16) ---------------------------------------------------
def _pattern(guide: Guide, calls: int, key=("latent", 0), has_uncond=True) -> list[bool]:
    return [guide.needs_context(key, has_uncond=has_uncond) for _ in range(calls)]


def test_generic_rows_are_skipped_when_the_mask_is_known_to_be_one():
    full = DeGuSettings(enabled=True, mask_source="full")
    assert _pattern(Guide(full), 3) == [False] * 3
    assert _pattern(Guide(full.replace(balance=0.5, identity_scale=1.5, context_scale=2.0)), 3) == [False] * 3
    assert _pattern(Guide(DeGuSettings(enabled=True, balance=1.0)), 3) == [False] * 3
    # Without an uncond the identity scale mixes s with g: out = g + a_id * (s - g).
    assert _pattern(Guide(full.replace(identity_scale=1.5)), 2, has_uncond=False) == [True, True]
    assert _pattern(Guide(full), 2, has_uncond=False) == [False, False]  # a_id = 1: out = s
    # A mask that is not known to be 1 needs g on every call by default.
    assert _pattern(Guide(full.replace(balance=-0.5)), 3) == [True] * 3
    # Below balance 0 the context is measured on every call whatever the refresh interval.
    reusing = Guide(DeGuSettings(enabled=True, balance=-0.05, context_refresh=4))
    reusing.context_difference = torch.zeros(1)
    assert _pattern(reusing, 3) == [True] * 3
    assert _pattern(Guide(DeGuSettings(enabled=True, balance=0.99)), 3) == [True] * 3


def test_context_refresh_runs_the_generic_rows_every_nth_call():
    guide = Guide(DeGuSettings(enabled=True, context_refresh=3))
    guide.context_difference = torch.zeros(1)  # as after a measured call
    assert _pattern(guide, 7) == [True, False, False, True, False, False, True]
    assert (guide.context_calls, guide.reused_calls) == (3, 4)


def test_a_new_latent_size_or_prompt_entry_forces_a_refresh():
    guide = Guide(DeGuSettings(enabled=True, context_refresh=4))
    guide.context_difference = torch.zeros(1)
    assert _pattern(guide, 2, key=("64x64", 0)) == [True, False]
    assert _pattern(guide, 2, key=("128x128", 0)) == [True, False]  # hires pass
    assert _pattern(guide, 2, key=("128x128", 1)) == [True, False]  # prompt editing moved on


def test_nothing_stored_yet_forces_a_refresh():
    guide = Guide(DeGuSettings(enabled=True, context_refresh=4))
    assert _pattern(guide, 2) == [True, True]  # no call has stored a difference


def test_reused_context_follows_the_noise_level():
    """Between refreshes the context is s + sigma * (g - s) / sigma_then: exact when the subject's
    effect on the prediction is proportional to sigma, as in x0 = x - sigma * eps."""
    settings = DeGuSettings(enabled=True, mask_source="difference", context_refresh=2, ema=0.0)
    u1, s1, _ = _preds(1)
    u2, s2, _ = _preds(2)
    eps_effect = torch.randn(s1.shape, generator=torch.Generator().manual_seed(3))
    sigma1, sigma2 = torch.tensor([4.0, 2.0]), torch.tensor([3.0, 0.5])
    g1 = s1 + sigma1.view(-1, 1, 1, 1) * eps_effect
    g2 = s2 + sigma2.view(-1, 1, 1, 1) * eps_effect
    guide = Guide(settings)
    assert guide.needs_context("k", has_uncond=True)
    guide(u1, s1, g1, cfg_scale=5.0, sigma=sigma1)
    assert not guide.needs_context("k", has_uncond=True)
    reused = guide(u2, s2, None, cfg_scale=5.0, sigma=sigma2).output
    measured = Guide(settings)(u2, s2, g2, cfg_scale=5.0, sigma=sigma2).output
    assert torch.allclose(reused, measured, atol=1e-5)


def test_reused_context_keeps_the_prediction_dtype():
    u, s, g = (t.half() for t in _preds())
    guide = Guide(DeGuSettings(enabled=True, mask_source="difference", context_refresh=2))
    guide(u, s, g, cfg_scale=5.0, sigma=torch.tensor([2.0, 1.0]))
    out = guide.delta(u, s, None, cfg_scale=5.0, sigma=torch.tensor([1.5, 0.5]))
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and out.abs().sum() > 0


def test_full_mask_without_generic_rows_gives_the_plain_cfg_result():
    u, s, _ = _preds()
    guide = Guide(DeGuSettings(enabled=True, mask_source="full"))
    assert torch.equal(guide.delta(u, s, None, cfg_scale=7.0), torch.zeros_like(s))
    boosted = Guide(DeGuSettings(enabled=True, mask_source="full", identity_scale=1.5))
    assert torch.allclose(boosted(u, s, None, cfg_scale=7.0).output, u + 7.0 * 1.5 * (s - u))


def test_a_layout_is_the_mask_at_every_step_resized_and_moved_by_the_balance():
    layout = torch.zeros(1, 1, 8, 8)
    layout[..., 2:6, 2:6] = 1.0
    u, s, g = torch.zeros(1, 4, 16, 16), torch.ones(1, 4, 16, 16), torch.full((1, 4, 16, 16), 2.0)
    attention = torch.rand(1, 8, 8)  # ignored: the layout stands for every estimate
    for balance in (0.0, 0.5, -0.5):
        guide = Guide(DeGuSettings(enabled=True, balance=balance), layout=layout)
        for _ in range(2):
            out = guide(u, s, g, cfg_scale=5.0, attention=attention)
            assert out.source == "layout"
            expected = torch.nn.functional.interpolate(layout, size=(16, 16), mode="bilinear", align_corners=False)
            if balance > 0:
                expected = 1 - (1 - balance) * (1 - expected)
            elif balance < 0:
                expected = (1 + balance) * expected
            torch.testing.assert_close(out.mask, expected)


def test_the_layout_mask_reads_the_passs_last_attention_step():
    from lib_degu import mask

    guide = Guide(DeGuSettings(enabled=True))
    u = torch.zeros(2, 4, 16, 16)
    maps = [torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    images = [torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(10 + k)) for k in range(3)]
    assert guide.layout_mask() is None  # no step yet
    for raw, s in zip(maps, images, strict=True):
        guide(u, s, s + 1, cfg_scale=5.0, attention=raw)
    torch.testing.assert_close(guide.layout_mask(), mask.layout_mask(maps[-1], images[-1], (16, 16)))
    assert not torch.equal(guide.layout_mask(), mask.layout_mask(maps[0], images[0], (16, 16)))


def test_no_layout_from_a_pass_that_never_read_the_attention():
    guide = Guide(DeGuSettings(enabled=True, mask_source="difference"))
    s = torch.randn(1, 4, 16, 16)
    guide(torch.zeros_like(s), s, s + 1, cfg_scale=5.0, attention=torch.rand(1, 8, 8))
    assert guide.layout_mask() is None
