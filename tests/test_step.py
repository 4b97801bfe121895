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
