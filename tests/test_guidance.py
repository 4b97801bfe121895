"""The identities of DESIGN.md §1, over random shapes, scales and dtypes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_degu.guidance import broadcast_mask, cfg, combine

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}


@st.composite
def predictions(draw):
    batch = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 5))
    height = draw(st.integers(1, 9))
    width = draw(st.integers(1, 9))
    video = draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, channels, 3, height, width) if video else (batch, channels, height, width)
    u, s, g = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    mask = torch.rand((batch, 1, height, width), generator=gen)
    return u, s, g, mask


scales = st.floats(0.0, 15.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(predictions(), scales, st.floats(0.0, 3.0))
def test_full_mask_identity_one_is_cfg_on_the_prompt_as_written(preds, w, a_ctx):
    u, s, g, mask = preds
    out = combine(u, s, g, torch.ones_like(mask), cfg_scale=w, identity_scale=1.0, context_scale=a_ctx)
    assert torch.equal(out, cfg(u, s, w))


@settings(max_examples=150, deadline=None)
@given(predictions(), scales, st.floats(0.0, 3.0))
def test_zero_mask_context_one_is_cfg_on_the_generic_prompt(preds, w, a_id):
    u, s, g, mask = preds
    out = combine(u, s, g, torch.zeros_like(mask), cfg_scale=w, identity_scale=a_id, context_scale=1.0)
    assert torch.equal(out, cfg(u, g, w))


@settings(max_examples=150, deadline=None)
@given(predictions(), scales)
def test_unit_scales_are_context_everywhere_plus_identity_inside_the_mask(preds, w):
    u, s, g, mask = preds
    out = combine(u, s, g, mask, cfg_scale=w)
    m = broadcast_mask(mask, like=s).double()
    u64, s64, g64 = u.double(), s.double(), g.double()
    expected = u64 + w * (g64 - u64) + w * m * (s64 - g64)
    scale = 1 + w * 3 * max(1.0, float(s64.abs().max()), float(u64.abs().max()), float(g64.abs().max()))
    assert torch.allclose(out.double(), expected, atol=TOLERANCE[u.dtype] * scale, rtol=0)


@settings(max_examples=150, deadline=None)
@given(predictions(), scales, st.floats(0.0, 3.0))
def test_no_uncond_formula(preds, w, a_id):
    _, s, g, mask = preds
    out = combine(None, s, g, mask, cfg_scale=w, identity_scale=a_id)
    m = broadcast_mask(mask, like=s)
    ref = g.double() + a_id * m.double() * (s.double() - g.double())
    assert torch.allclose(out.double(), ref, atol=TOLERANCE[s.dtype] * (1 + 3 * a_id) * 4, rtol=0)
    assert torch.equal(combine(None, s, g, torch.ones_like(mask), cfg_scale=w), s)
    assert torch.equal(combine(None, s, g, torch.zeros_like(mask), cfg_scale=w), g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_keeps_dtype_and_device_and_matches_float64_reference(dtype):
    gen = torch.Generator().manual_seed(1)
    u, s, g = (torch.randn(2, 4, 8, 6, generator=gen) for _ in range(3))
    mask = torch.rand(2, 1, 8, 6, generator=gen)
    out = combine(u.to(dtype), s.to(dtype), g.to(dtype), mask, cfg_scale=7.0, identity_scale=1.3, context_scale=0.8)
    assert out.dtype == dtype and out.device == u.device and out.shape == u.shape
    ref = u.double() + 7.0 * (1.3 * mask.double() * (s - u).double() + 0.8 * (1 - mask.double()) * (g - u).double())
    assert torch.allclose(out.double(), ref, atol=TOLERANCE[dtype] * 40, rtol=0)


def test_mask_is_broadcast_over_frames_of_video_latents():
    s = torch.zeros(1, 2, 3, 4, 5)
    g = torch.ones(1, 2, 3, 4, 5)
    mask = torch.zeros(1, 1, 4, 5)
    mask[..., 0, 0] = 1
    out = combine(None, s, g, mask, cfg_scale=5.0)
    assert torch.equal(out[:, :, :, 0, 0], torch.zeros(1, 2, 3))
    assert torch.equal(out[:, :, :, 1:, :], torch.ones(1, 2, 3, 3, 5))


def test_rejects_a_mask_of_the_wrong_shape():
    s = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="mask must be"):
        combine(s, s, s, torch.ones(1, 4, 8, 8), cfg_scale=1.0)
