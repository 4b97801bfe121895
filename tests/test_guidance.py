"""The identities of DESIGN.md §1, over random shapes, scales and dtypes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_degu.guidance import broadcast_mask, cfg, combine

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROUNDINGS = 4  # allowed rounding errors of the dtype per unit of magnitude; about 1.2 was measured


def _assert_rounding_close(out: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor, dtype: torch.dtype) -> None:
    """``out`` within a few roundings of ``dtype`` of the float64 ``ref``, element by element, where
    ``magnitude`` bounds the size of the terms that were rounded. A tolerance per element (not one
    for the whole tensor scaled by its largest value) is what makes a wrong mask fail in bf16 too."""
    finfo = torch.finfo(dtype)
    allowed = ROUNDINGS * (finfo.eps * magnitude + finfo.smallest_normal)
    assert bool(((out.double() - ref).abs() <= allowed).all()), float(((out.double() - ref).abs() / allowed).max())


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
    m = broadcast_mask(mask, like=s).double()  # the mask as the batch's dtype rounds it
    u64, s64, g64 = u.double(), s.double(), g.double()
    expected = u64 + w * (g64 - u64) + w * m * (s64 - g64)
    _assert_rounding_close(out, expected, u64.abs() + w * (s64.abs() + g64.abs() + 2 * u64.abs()), u.dtype)


@settings(max_examples=150, deadline=None)
@given(predictions(), scales, st.floats(0.0, 3.0))
def test_no_uncond_formula(preds, w, a_id):
    _, s, g, mask = preds
    out = combine(None, s, g, mask, cfg_scale=w, identity_scale=a_id)
    m = broadcast_mask(mask, like=s).double()
    s64, g64 = s.double(), g.double()
    ref = g64 + a_id * m * (s64 - g64)
    _assert_rounding_close(out, ref, g64.abs() + (1 + a_id * m) * (s64.abs() + g64.abs()), s.dtype)
    assert torch.equal(combine(None, s, g, torch.ones_like(mask), cfg_scale=w), s)
    assert torch.equal(combine(None, s, g, torch.zeros_like(mask), cfg_scale=w), g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_keeps_dtype_and_device_and_matches_float64_reference(dtype):
    gen = torch.Generator().manual_seed(1)
    u, s, g = (torch.randn(2, 4, 8, 6, generator=gen) for _ in range(3))
    mask = torch.rand(2, 1, 8, 6, generator=gen)
    u, s, g = u.to(dtype), s.to(dtype), g.to(dtype)
    out = combine(u, s, g, mask, cfg_scale=7.0, identity_scale=1.3, context_scale=0.8)
    assert out.dtype == dtype and out.device == u.device and out.shape == u.shape
    m = broadcast_mask(mask, like=s).double()
    u64, s64, g64 = u.double(), s.double(), g.double()
    ref = u64 + 7.0 * (1.3 * m * (s64 - u64) + 0.8 * (1 - m) * (g64 - u64))
    magnitude = u64.abs() + 7.0 * (1.3 * m + 0.8 * (1 - m)) * (s64.abs() + g64.abs() + 2 * u64.abs())
    _assert_rounding_close(out, ref, magnitude, dtype)


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
