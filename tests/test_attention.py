"""Attention capture against an explicit reference on a tiny real-architecture UNet."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lib_degu.attention import AttentionCapture, downsample_factor, find_cross_attention, token_indicator
from lib_degu.mask import resize
from tests.tiny_models import CONTEXT_DIM, tiny_unet


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _inputs(batch, height, width, tokens=77, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=gen)
    t = torch.full((batch,), 500)
    context = torch.randn(batch, tokens, CONTEXT_DIM, generator=gen)
    return x, t, context


def _reference_maps(unet, x, t, context, subject_rows, positions, factors):
    """Record each attn2's inputs, then compute softmax(q k^T / sqrt(d)) explicitly, head by head."""
    recorded = []
    handles = [
        attn.register_forward_pre_hook(
            lambda m, args, kwargs: recorded.append((m, args[0], kwargs["encoder_hidden_states"])), with_kwargs=True
        )
        for _, attn in find_cross_attention(unet)
    ]
    try:
        with torch.no_grad():
            unet(x, t, context)
    finally:
        for h in handles:
            h.remove()
    H, W = x.shape[-2:]
    total = torch.zeros(len(subject_rows), H, W, dtype=torch.float64)
    layers = 0
    for attn, hidden, ctx in recorded:
        factor = downsample_factor((H, W), hidden.shape[1])
        if factor not in factors:
            continue
        layers += 1
        heads = attn.heads
        for image, row in enumerate(subject_rows):
            q = attn.to_q(hidden[row]).double()
            k = attn.to_k(ctx[row]).double()
            d = q.shape[-1] // heads
            per_head = []
            for head in range(heads):
                qh, kh = q[:, head * d : (head + 1) * d], k[:, head * d : (head + 1) * d]
                probs = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
                per_head.append(probs[:, positions[image]].sum(dim=-1))
            mass = torch.stack(per_head).mean(dim=0)
            small = mass.view(math.ceil(H / factor), math.ceil(W / factor))
            total[image] += resize(small[None].float(), (H, W))[0].double()
    return total / layers


@pytest.mark.parametrize(("height", "width"), [(16, 16), (16, 24), (15, 9)])
def test_maps_equal_explicit_softmax(unet, height, width):
    x, t, context = _inputs(3, height, width)
    subject_rows = [0, 2]
    positions = [[5, 6], [9]]
    weights = token_indicator(positions, 77)
    with AttentionCapture(unet, downsample_factors=(2, 4)) as capture:
        capture.begin_step(subject_rows, weights)
        with torch.no_grad():
            unet(x, t, context)
        got = capture.take()
    ref = _reference_maps(unet, x, t, context, subject_rows, positions, (2, 4))
    assert got is not None and got.shape == (2, height, width)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert float(got.min()) >= 0 and float(got.max()) <= 1


def test_split_batch_calls_map_rows_by_offset(unet):
    """batch_cond_uncond off: the same rows arrive in consecutive calls of one row each."""
    x, t, context = _inputs(3, 16, 16)
    weights = token_indicator([[3], [7, 8]], 77)
    with AttentionCapture(unet) as capture:
        capture.begin_step([1, 2], weights)
        with torch.no_grad():
            unet(x, t, context)
        whole = capture.take()
        capture.begin_step([1, 2], weights)
        with torch.no_grad():
            for row in range(3):
                unet(x[row : row + 1], t[row : row + 1], context[row : row + 1])
        split = capture.take()
    assert whole is not None and split is not None
    assert torch.allclose(whole, split, atol=1e-6)


def test_layer_selection_is_a_parameter(unet):
    x, t, context = _inputs(1, 16, 16)
    weights = token_indicator([[4]], 77)
    maps = {}
    for factors in [(1,), (4,), None]:
        with AttentionCapture(unet, downsample_factors=factors) as capture:
            capture.begin_step([0], weights)
            with torch.no_grad():
                unet(x, t, context)
            maps[factors] = capture.take()
    assert not torch.allclose(maps[(1,)], maps[(4,)])
    ref_all = _reference_maps(unet, x, t, context, [0], [[4]], (1, 2, 4))
    assert torch.allclose(maps[None].double(), ref_all, atol=1e-5)
    with AttentionCapture(unet, downsample_factors=(64,)) as capture:
        capture.begin_step([0], weights)
        with torch.no_grad():
            unet(x, t, context)
        assert capture.take() is None


def _hook_count(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_hooks_removed_after_exception_in_the_body(unet):
    before = _hook_count(unet)
    x, t, context = _inputs(1, 16, 16)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(unet) as capture:
            assert _hook_count(unet) == before + 1 + 2 * len(find_cross_attention(unet))
            capture.begin_step([0], token_indicator([[1]], 77))
            with torch.no_grad():
                unet(x, t, context)
            raise RuntimeError("boom")
    assert _hook_count(unet) == before
    assert not capture.active


def test_hooks_removed_after_exception_inside_the_model(unet):
    before = _hook_count(unet)
    x, t, context = _inputs(1, 16, 16)
    first_attn2 = find_cross_attention(unet)[0][1]

    def explode(*_):
        raise KeyboardInterrupt("interrupted mid-sampling")

    handle = first_attn2.to_v.register_forward_hook(explode)
    try:
        with pytest.raises(KeyboardInterrupt):
            with AttentionCapture(unet) as capture:
                capture.begin_step([0], token_indicator([[1]], 77))
                with torch.no_grad():
                    unet(x, t, context)
    finally:
        handle.remove()
    assert _hook_count(unet) == before


def test_disarmed_capture_does_not_compute(unet):
    x, t, context = _inputs(1, 16, 16)
    with AttentionCapture(unet) as capture:
        with torch.no_grad():
            unet(x, t, context)
        assert capture.take() is None


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def test_capture_never_materialises_pixel_by_pixel_attention(unet):
    """The capture's largest tensor grows like pixels*tokens, never like pixels squared."""
    largest = {}
    for side in (32, 64):
        x, t, context = _inputs(2, side, side)
        for capturing in (False, True):
            with AttentionCapture(unet, downsample_factors=None) as capture:
                if capturing:
                    capture.begin_step([0, 1], token_indicator([[1], [2]], 77))
                with torch.no_grad(), _LargestTensor() as probe:
                    unet(x, t, context)
            largest[side, capturing] = probe.largest
    print(largest)
    for side in (32, 64):
        pixels = side * side
        heads_tokens_rows = 4 * 77 * 2
        # Whatever the model itself allocates, the capture adds at most rows*heads*pixels*tokens.
        assert largest[side, True] <= max(largest[side, False], heads_tokens_rows * pixels)
        assert largest[side, True] < pixels * pixels  # one (HW)^2 matrix would already be larger
    # Four times the pixels: the capture's largest tensor grows four times, not sixteen.
    assert largest[64, True] <= 4 * largest[32, True]


def test_joint_attention_indicator_trick_equals_explicit_softmax():
    """Flux layout: text tokens first, then 2x2 patches; the map is the mass on the subject's text keys."""
    import types

    from lib_degu.attention import JointAttentionCapture

    def attention(q, k, v, pe=None):  # (B, H, L, D) -> (B, L, H*D), like backend/nn/flux.py
        out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    module = types.SimpleNamespace(attention=attention)
    gen = torch.Generator().manual_seed(0)
    batch, heads, text, dim = 3, 2, 6, 4
    height, width = 6, 10  # latent; 3x5 patches
    length = text + (height // 2) * (width // 2)
    blocks = [[torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3)] for _ in range(2)]
    positions = [[1, 2], [4]]
    capture = JointAttentionCapture(module)
    capture.begin_step([0, 1], token_indicator(positions, text))

    def model():
        return [module.attention(q, k, v, pe=None) for q, k, v in blocks]

    outputs = capture.call([(2, 0), (0, 1)], text, (height, width), model)  # rows 2 and 0 are the images
    assert module.attention is attention  # restored
    got = capture.take()
    assert torch.allclose(outputs[0], attention(*blocks[0]))  # the model's own output is untouched
    expected = torch.zeros(2, height, width)
    for q, k, _ in blocks:
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim), dim=-1)  # B, H, L, L
        for image, row in enumerate([2, 0]):
            mass = probs[row][:, text:, positions[image]].sum(-1).mean(0)  # image tokens
            expected[image] += resize(mass.view(1, height // 2, width // 2), (height, width))[0]
    assert torch.allclose(got, expected / len(blocks), atol=1e-5)
