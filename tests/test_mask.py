"""Mask refinement: balance endpoints, monotonicity, robust normalisation, any latent size."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_degu import mask as M


def test_difference_map_is_channel_mean_of_absolute_difference():
    s = torch.zeros(2, 4, 3, 5)
    g = torch.zeros(2, 4, 3, 5)
    g[0, :2, 1, 1] = 2.0
    raw = M.difference_map(s, g)
    assert raw.shape == (2, 3, 5)
    assert raw[0, 1, 1] == 1.0 and raw.sum() == 1.0


def test_normalise_uses_a_high_quantile_so_one_hot_pixel_does_not_flatten_the_map():
    raw = torch.full((1, 20, 20), 0.5)
    raw[0, 0, 0] = 1000.0
    out = M.normalise(raw)
    assert out.max() == 1.0 and out.min() == 1.0  # the bulk at 0.5 is the quantile: it maps to 1
    divided_by_max = raw / raw.max()
    assert divided_by_max[0, 5, 5] < 0.001


def test_normalise_subtracts_the_floor_so_the_background_goes_to_zero():
    # Cross-attention's floor: background at 0.3, subject at 0.5 (mass ratio 1.7, as trained models show).
    raw = torch.full((1, 20, 20), 0.3)
    raw[0, 5:10, 5:10] = 0.5
    out = M.normalise(raw)
    assert out[0, 0, 0] == 0.0 and out[0, 7, 7] == 1.0
    divided_by_quantile = M.normalise(raw, low_quantile=None)
    assert divided_by_quantile[0, 0, 0] == pytest.approx(0.6)  # above any useful threshold


def test_a_flat_map_normalises_to_ones():
    assert torch.equal(M.normalise(torch.full((2, 4, 4), 0.013)), torch.ones(2, 4, 4))


def test_normalise_is_per_image():
    raw = torch.stack([torch.linspace(0, 1, 100).view(10, 10), torch.linspace(0, 100, 100).view(10, 10)])
    out = M.normalise(raw)
    assert torch.allclose(out[0], out[1], atol=1e-6)


def test_gaussian_blur_keeps_constants_and_spreads_a_point():
    const = torch.full((1, 7, 9), 0.3)
    assert torch.allclose(M.gaussian_blur(const, 2.0), const)
    point = torch.zeros(1, 9, 9)
    point[0, 4, 4] = 1.0
    blurred = M.gaussian_blur(point, 1.0)
    assert blurred[0, 4, 4] < 1.0 and blurred[0, 4, 5] > 0 and abs(float(blurred.sum()) - 1.0) < 1e-5
    assert torch.equal(M.gaussian_blur(point, 0.0), point)


def test_soft_threshold_hard_and_soft():
    x = torch.tensor([[[0.1, 0.5, 0.9]]])
    assert torch.equal(M.soft_threshold(x, 0.5, 0.0), torch.tensor([[[0.0, 1.0, 1.0]]]))
    soft = M.soft_threshold(x, 0.5, 0.1)
    assert soft[0, 0, 1] == 0.5 and soft[0, 0, 0] < 0.02 and soft[0, 0, 2] > 0.98


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**16), st.floats(-1, 1), st.floats(-1, 1))
def test_balance_endpoints_exact_and_monotone(seed, b1, b2):
    m = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(M.apply_balance(m, 1.0), torch.ones_like(m))
    assert torch.equal(M.apply_balance(m, -1.0), torch.zeros_like(m))
    assert torch.equal(M.apply_balance(m, 0.0), m)
    low, high = sorted((b1, b2))
    assert bool((M.apply_balance(m, low) <= M.apply_balance(m, high) + 1e-7).all())


def test_ema_across_steps_and_restart_on_new_size():
    state = M.MaskState()
    a = torch.zeros(1, 4, 4)
    b = torch.ones(1, 4, 4)
    assert torch.equal(state.update(a, 0.5), a)
    assert torch.allclose(state.update(b, 0.5), torch.full((1, 4, 4), 0.5))
    bigger = torch.ones(1, 8, 6)
    assert torch.equal(state.update(bigger, 0.5), bigger)  # hires: new latent size, fresh start
    assert torch.equal(state.update(torch.zeros(1, 8, 6), 0.0), torch.zeros(1, 8, 6))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12), st.integers(1, 12), st.integers(1, 40), st.integers(1, 40), st.floats(-1, 1),
    st.floats(0, 8),
)
def test_refine_any_sizes_in_range(h, w, H, W, balance, blur):
    raw = torch.rand(2, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    params = M.MaskParams(threshold=0.4, softness=0.1, blur=blur, ema=0.5, balance=balance)
    state = M.MaskState()
    for _ in range(2):
        out = M.refine(raw, (H, W), params, state)
        assert out.shape == (2, 1, H, W) and out.dtype == torch.float32
        assert bool(((out >= 0) & (out <= 1)).all())


def test_refine_finds_the_bright_region_and_balance_overrides_it():
    raw = torch.zeros(1, 8, 16)
    raw[0, 2:6, 2:6] = 1.0
    raw += 0.01 * torch.rand(1, 8, 16, generator=torch.Generator().manual_seed(0))
    params = M.MaskParams(threshold=0.5, softness=0.05, blur=0.0, ema=0.0, balance=0.0)
    out = M.refine(raw, (16, 32), params)[0, 0]
    assert out[8, 8] > 0.99 and out[2, 28] < 0.01
    assert torch.equal(M.refine(raw, (16, 32), M.MaskParams(balance=1.0)), torch.ones(1, 1, 16, 32))
    assert torch.equal(M.refine(raw, (16, 32), M.MaskParams(balance=-1.0)), torch.zeros(1, 1, 16, 32))


def test_attention_map_averages_layers_of_different_resolutions():
    coarse = torch.ones(1, 2, 2)
    fine = torch.zeros(1, 4, 4)
    out = M.attention_map([coarse, fine], (4, 4))
    assert out.shape == (1, 4, 4) and torch.allclose(out, torch.full((1, 4, 4), 0.5))


def _square_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A predicted image (1, 4, 16, 16) with a 4x4 subject on a flat background, and its region."""
    region = torch.zeros(1, 16, 16, dtype=torch.bool)
    region[0, 6:10, 6:10] = True
    image = torch.where(region[:, None], torch.tensor([1.0, -0.5, 0.3, 2.0]).view(1, 4, 1, 1), torch.zeros(1, 4, 1, 1))
    return image, region


def test_snapping_pulls_a_coarse_blob_onto_the_subjects_edge():
    image, region = _square_scene()
    blob = torch.zeros(1, 16, 16)
    blob[0, 4:12, 4:12] = 1.0  # what an attention map two cells too wide gives: 4x the subject's area
    snapped = M.snap_to_image(blob, M.snap_weights(image), rounds=5)
    assert torch.equal(snapped[0] >= 0.5, region[0])
    assert snapped[region].min() > 0.99  # the subject stays whole
    assert torch.equal(M.snap_to_image(blob, M.snap_weights(image), rounds=0), blob)


def test_snap_weights_are_normalised_and_ignore_the_images_offset_and_scale():
    image, _ = _square_scene()
    weights = M.snap_weights(image)
    assert weights.shape == (1, (2 * M.SNAP_RADIUS + 1) ** 2, 256)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 256))
    assert torch.allclose(M.snap_weights(image * 7.0 - 3.0), weights, atol=1e-6)
    # A flat image has no edge: snapping is a plain box mean, and a constant map stays constant.
    flat = M.snap_weights(torch.full((2, 4, 8, 8), 0.2))
    assert torch.allclose(M.snap_to_image(torch.full((2, 8, 8), 0.7), flat, 3), torch.full((2, 8, 8), 0.7))


def test_refine_snaps_only_when_asked_and_given_the_image():
    image, region = _square_scene()
    raw = torch.zeros(1, 8, 8)
    raw[0, 2:6, 2:6] = 1.0  # the coarse map at half the latent size, spilling one cell each side
    params = M.MaskParams(threshold=0.5, softness=0.05, blur=0.0, ema=0.0)
    unsnapped = M.refine(raw, (16, 16), params)
    assert torch.equal(M.refine(raw, (16, 16), params, image=image), unsnapped)  # snap 0: as before
    assert torch.equal(M.refine(raw, (16, 16), M.MaskParams(**{**params.__dict__, "snap": 5})), unsnapped)
    snapped = M.refine(raw, (16, 16), M.MaskParams(**{**params.__dict__, "snap": 5}), image=image)
    assert (unsnapped[0, 0] >= 0.5).sum() > 2 * region.sum()
    assert torch.equal(snapped[0, 0] >= 0.5, region[0])


def test_the_layout_mask_is_hard_and_as_tight_as_the_subject():
    """A finished pass's last map, coarse and with a floor, spilling over the subject: the layout mask
    is 0 or 1 and exactly the subject once snapped to the final image; the soft mask would spill."""
    image, region = _square_scene()
    raw = torch.full((1, 8, 8), 0.2)  # cross-attention's floor
    raw[0, 2:6, 2:6] = 0.9  # the spill around the subject, above the cut
    raw[0, 3:5, 3:5] = 1.0
    layout = M.layout_mask(raw, image, (16, 16))
    assert layout.shape == (1, 1, 16, 16)
    assert torch.equal(layout[0, 0], region[0].float())
    unsnapped = M.layout_mask(raw, image, (16, 16), snap=0)
    assert set(unsnapped.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(unsnapped[0, 0], region[0].float())
    # The pass's own soft mask at the defaults covers far more than the subject.
    assert float(M.refine(raw, (16, 16), M.MaskParams()).mean()) > 2 * float(region.float().mean())


def test_the_layout_cut_follows_each_images_own_peak():
    """A peaked map (one cell of the subject high, the rest of it a little above the floor) is blurred
    and snapped to a located peak of about 0.63: a fixed cut at 0.65 would keep nothing. The layout is
    still exactly the subject, beside an image of the batch whose map peaks near 1."""
    image, region = _square_scene()
    peaked = torch.full((8, 8), 0.2)
    peaked[3:5, 3:5] = 0.45
    peaked[3, 3] = 1.0
    broad = torch.full((8, 8), 0.2)
    broad[2:6, 2:6] = 0.75
    broad[3:5, 3:5] = 1.0
    raw, images = torch.stack([peaked, broad]), image.expand(2, *image.shape[1:])
    assert float(M.locate(peaked[None], (16, 16), 1.0, M.LAYOUT_SNAP, image).max()) < 0.65
    layout = M.layout_mask(raw, images, (16, 16))
    assert torch.equal(layout[:, 0], region.float().expand(2, 16, 16))
    assert M.layout_mask(torch.zeros(1, 8, 8), image, (16, 16)).all()  # flat: nothing known, the plain prompt
