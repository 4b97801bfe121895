"""The attention mask on SD3 / SD3.5's MM-DiT (``MMDiTCapture``) against an explicit softmax, on tiny
random-weight models of the real layouts: A1111's SD3 ``MMDiT`` and Forge's SD3.5 ``MMDiTX`` (large,
and medium with MMDiT-X ``attn2`` blocks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lib_degu.attention import (
    MMDIT_BLOCK_SPAN,
    MMDiTCapture,
    find_cross_attention,
    find_mmdit,
    mmdit_blocks,
    token_indicator,
)
from lib_degu.hosts.common import sd3_subject_keys
from tests import tiny_models
from tests.fake_a1111 import installed as a1111_installed
from tests.fake_forge import harness as forge_harness
from tests.mmdit_reference import explicit_joint_map, recorded_joint_attention, sharpen_joint_attention

LAYOUTS = ["sd3-a1111", "sd35-large", "sd35-medium"]
CHOSEN = [2, 3]  # the middle quarter of the tiny models' 6 blocks, rounded


def _model(layout: str, seed: int = 0) -> torch.nn.Module:
    if layout == "sd3-a1111":
        with a1111_installed():
            model = tiny_models.tiny_sd3_mmdit(seed)
    else:
        with forge_harness.installed():
            model = tiny_models.tiny_sd35_mmditx(seed, variant=layout.split("-")[1])
    sharpen_joint_attention(model)
    return model.requires_grad_(False)


@pytest.fixture(scope="module", params=LAYOUTS)
def layout_model(request):
    return request.param, _model(request.param)


def _inputs(batch: int, latent_hw: tuple[int, int], clip_chunks: int = 2, t5_tokens: int = 154, seed: int = 0,
            t5_on: bool = True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, *latent_hw, generator=gen)
    t = torch.full((batch,), 700.0)
    context = torch.randn(batch, 77 * clip_chunks + t5_tokens, tiny_models.CONTEXT_DIM, generator=gen)
    if not t5_on:
        context[:, 77 * clip_chunks :] = 0
    return x, t, context


def _pooled(model: torch.nn.Module, batch: int) -> torch.Tensor:
    return torch.randn(batch, model.y_embedder.mlp[0].in_features, generator=torch.Generator().manual_seed(1))


def _run(model, x, t, context):
    with torch.no_grad():
        return model(x, t, y=_pooled(model, x.shape[0]), context=context)


def test_the_chosen_blocks_are_the_middle_quarter():
    assert MMDIT_BLOCK_SPAN == (3 / 8, 5 / 8)
    assert mmdit_blocks(24) == list(range(9, 15))  # SD3 medium, SD3.5 medium
    assert mmdit_blocks(38) == list(range(14, 24))  # SD3.5 large
    assert mmdit_blocks(6) == CHOSEN
    assert mmdit_blocks(2) == [1] and mmdit_blocks(1) == [0]  # never none


@pytest.mark.parametrize("latent_hw", [(8, 8), (12, 8)])
def test_map_equals_explicit_softmax_over_clip_and_t5_keys(layout_model, latent_hw):
    """Images 0 and 1 are batch rows 2 and 0; subject keys in the CLIP chunks and in the T5 part."""
    layout, model = layout_model
    assert find_mmdit(model) is not None and not find_cross_attention(model)
    x, t, context = _inputs(3, latent_hw)
    positions = [[5, 6, 154 + 4], [80, 154 + 40, 154 + 41]]
    capture = MMDiTCapture(model)
    assert capture.blocks == CHOSEN
    with recorded_joint_attention(model) as calls, capture:
        capture.begin_step([2, 0], token_indicator(positions, context.shape[1]))
        out = _run(model, x, t, context)
        got = capture.take()
    assert got is not None and got.shape == (2, *latent_hw)
    for image, row in enumerate([2, 0]):
        expected = explicit_joint_map(calls, row, positions[image], latent_hw, CHOSEN)
        assert torch.allclose(got[image].double(), expected, atol=1e-5), layout
        others = explicit_joint_map(calls, row, positions[image], latent_hw, [0, 5])
        assert not torch.allclose(got[image].double(), others, atol=1e-3)  # other blocks give another map
    assert torch.equal(out, _run(model, x, t, context))  # the model's own output is untouched


def test_a_block_choice_is_a_parameter(layout_model):
    layout, model = layout_model
    x, t, context = _inputs(1, (8, 8))
    positions = [[3, 200]]
    with recorded_joint_attention(model) as calls, MMDiTCapture(model, blocks=[0, 5]) as capture:
        capture.begin_step([0], token_indicator(positions, context.shape[1]))
        _run(model, x, t, context)
        got = capture.take()
    assert torch.allclose(got[0].double(), explicit_joint_map(calls, 0, positions[0], (8, 8), [0, 5]), atol=1e-5)


def test_mmditx_attn2_is_never_read():
    """SD3.5 medium: chosen block 2 has an MMDiT-X ``attn2`` (image-only self-attention, called after the
    joint attention). The capture runs its kernel once per chosen block, on the joint call's keys."""
    model = _model("sd35-medium")
    assert model.joint_blocks[2].x_block.x_block_self_attn and not model.joint_blocks[3].x_block.x_block_self_attn
    x, t, context = _inputs(1, (8, 8))
    namespace = find_mmdit(model)
    kernel = namespace["attention"]
    ran: list[tuple[int, int]] = []  # (query tokens, key tokens) of every kernel run: the model's and the capture's

    def spy(q, k, v, heads, *args, **kwargs):
        ran.append((q.shape[1], k.shape[1]))
        return kernel(q, k, v, heads, *args, **kwargs)

    namespace["attention"] = spy  # the capture wraps whatever kernel is in place
    try:
        with MMDiTCapture(model) as capture:
            capture.begin_step([0], token_indicator([[3]], context.shape[1]))
            _run(model, x, t, context)
            got = capture.take()
    finally:
        namespace["attention"] = kernel
    image, keys = 16, context.shape[1] + 16
    own_runs = len(model.joint_blocks) + 3  # a joint attention per block, attn2 in blocks 0-2
    assert len(ran) == own_runs + len(CHOSEN)
    assert [r for r in ran if r[0] != r[1]] == [(image, keys)] * len(CHOSEN)
    assert got is not None


class _Shapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(value):
                self.shapes.append(tuple(value.shape))
        return out


def test_no_tokens_by_tokens_tensor_is_formed():
    """A 24x24 latent: 144 image tokens, 308 text keys. No tensor of the capture (or the model) has two
    dimensions of token size; the model's widths stay below 144 (head dim 4, 3 heads, MLP 48, patch
    embedding 16 * 2 * 2 = 64)."""
    with forge_harness.installed():
        from backend.nn.mmditx import MMDiTX

    torch.manual_seed(0)
    model = MMDiTX(depth=3, head_dim=4, adm_in_channels=8, pos_embed_max_size=12, qk_norm="rms",
                   context_embedder_config={"target": "torch.nn.Linear",
                                            "params": {"in_features": 32, "out_features": 12}}).eval()
    x, t, context = _inputs(2, (24, 24))
    tokens = 144
    with MMDiTCapture(model) as capture:
        capture.begin_step([0, 1], token_indicator([[1, 200], [2]], context.shape[1]))
        with torch.no_grad(), _Shapes() as probe:
            model(x, t, y=torch.zeros(2, 8), context=context)
        assert capture.take() is not None
    large = [s for s in probe.shapes if sum(d >= tokens for d in s) >= 2]
    assert not large, large


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_patches_undone_after_an_exception_inside_the_model(layout_model, error):
    layout, model = layout_model
    namespace = find_mmdit(model)
    kernel, before = namespace["attention"], _hooks(model)
    x, t, context = _inputs(1, (8, 8))

    def explode(module, args):
        raise error("interrupted mid-step")

    handle = model.joint_blocks[3].register_forward_pre_hook(explode)
    try:
        with pytest.raises(error), MMDiTCapture(model) as capture:
            assert namespace["attention"] is not kernel and _hooks(model) == before + 1 + 1 + 2 * len(CHOSEN)
            capture.begin_step([0], token_indicator([[1]], context.shape[1]))
            _run(model, x, t, context)
    finally:
        handle.remove()
    assert namespace["attention"] is kernel and _hooks(model) == before and not capture.active


def test_chains_with_another_extensions_kernel_patch(layout_model):
    """Another patch in place before: ours calls it and puts it back. Another patch put over ours and
    still there at our exit: it stays, and ours only passes calls through from then on."""
    layout, model = layout_model
    namespace = find_mmdit(model)
    kernel = namespace["attention"]
    seen = []

    def theirs(q, k, v, heads, *args, **kwargs):
        seen.append(q.shape[1])
        return kernel(q, k, v, heads, *args, **kwargs)

    x, t, context = _inputs(1, (8, 8))
    plain = _run(model, x, t, context)
    namespace["attention"] = theirs
    try:
        with MMDiTCapture(model) as capture:
            capture.begin_step([0], token_indicator([[1]], context.shape[1]))
            assert torch.equal(_run(model, x, t, context), plain)
            assert capture.take() is not None
        assert namespace["attention"] is theirs and seen  # theirs ran under ours and is back
    finally:
        namespace["attention"] = kernel
    capture = MMDiTCapture(model).__enter__()
    ours = namespace["attention"]

    def later(q, k, v, heads, *args, **kwargs):
        return ours(q, k, v, heads, *args, **kwargs)

    namespace["attention"] = later
    capture.remove()
    assert namespace["attention"] is later  # not torn out from under the later patch
    capture.begin_step([0], token_indicator([[1]], context.shape[1]))
    assert torch.equal(_run(model, x, t, context), plain) and capture.take() is None  # a pass-through now
    namespace["attention"] = kernel


def test_disarmed_capture_runs_no_extra_kernel(layout_model):
    layout, model = layout_model
    x, t, context = _inputs(1, (8, 8))
    with recorded_joint_attention(model) as calls, MMDiTCapture(model) as capture:
        _run(model, x, t, context)
        assert capture.take() is None
    assert len(calls) == len(model.joint_blocks) + sum(
        getattr(b.x_block, "x_block_self_attn", False) for b in model.joint_blocks
    )


def test_skipped_blocks_give_no_map():
    """Forge's ``transformer_options["skip_layers"]`` (skip-layer guidance) over every chosen block."""
    model = _model("sd35-large")
    x, t, context = _inputs(1, (8, 8))
    with MMDiTCapture(model) as capture:
        capture.begin_step([0], token_indicator([[1]], context.shape[1]))
        with torch.no_grad():
            model(x, t, y=_pooled(model, 1), context=context, transformer_options={"skip_layers": CHOSEN})
        assert capture.take() is None


def test_t5_off_slots_carry_no_subject_information(layout_model):
    """Why T5 keys are not counted when T5 is off (both hosts' default): its part of the context is
    zeros, every T5 key is the same vector, so the mass on the subject's T5 slots is exactly their
    share of the mass on the whole T5 block - where the image looks at padding, not at the subject."""
    layout, model = layout_model
    x, t, context = _inputs(1, (8, 8), t5_on=False)
    t5 = list(range(154, 308))
    with recorded_joint_attention(model) as calls:
        _run(model, x, t, context)
    for block in range(len(model.joint_blocks)):
        subject_slots = explicit_joint_map(calls, 0, [160, 161], (8, 8), [block])
        whole = explicit_joint_map(calls, 0, t5, (8, 8), [block])
        assert torch.allclose(subject_slots, whole * 2 / len(t5), atol=1e-9)


class _Chunk:
    def __init__(self, tokens):
        self.tokens, self.fixes = tokens, []


def _clip(line):
    """CLIP-like: chunks of 75 words between BOS (1) and EOS/padding (2), 77 tokens each."""
    words = [hash(w) % 1000 + 10 for w in line.split()]
    chunks = [words[i : i + 75] for i in range(0, max(len(words), 1), 75)]
    return [_Chunk([1] + c + [2] * (76 - len(c))) for c in chunks], len(words)


def _t5(line):
    return [_Chunk([hash(w) % 1000 + 10 for w in line.split()] + [1])], 0


def test_sd3_subject_keys_count_clip_and_t5_and_only_clip_when_t5_is_off():
    text, generic = "a photo of sks dog", "a photo of a dog"
    assert sd3_subject_keys(_clip, None, text, generic, "sks", t5_cut_to_clip=True) == [4]
    assert sd3_subject_keys(_clip, _t5, text, generic, "sks", t5_cut_to_clip=True) == [4, 77 + 3]
    long_text = " ".join(["w"] * 80) + " sks"  # 81 words: two CLIP chunks, the subject in the second
    long_generic = long_text.replace("sks", "a")
    # CLIP: chunk 1, after its BOS; T5 (no BOS) from 2 * 77 on
    assert sd3_subject_keys(_clip, _t5, long_text, long_generic, "sks", t5_cut_to_clip=False) == [77 + 6, 154 + 80]
    cut = " ".join(["w"] * 200) + " sks"  # 3 CLIP chunks (231 keys); T5 position 200 < 231 stays when cut
    assert sd3_subject_keys(_clip, _t5, cut, cut.replace("sks", "a"), "sks", t5_cut_to_clip=True) == [
        2 * 77 + 1 + 50, 231 + 200
    ]
    few = "sks " + " ".join(["w"] * 10)  # one chunk: A1111 cuts T5 at 77 keys, so a T5 key at 77+ is dropped
    t5_long = lambda line: ([_Chunk([7] * 100 + [hash(w) % 1000 + 10 for w in line.split()])], 0)  # noqa: E731
    assert sd3_subject_keys(_clip, t5_long, few, few.replace("sks", "a"), "sks", t5_cut_to_clip=True) == [1]
    assert sd3_subject_keys(_clip, t5_long, few, few.replace("sks", "a"), "sks", t5_cut_to_clip=False) == [1, 177]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_half_precision_map_is_close_to_float32(layout):
    model = _model(layout)  # its own copy: the bf16 round trip changes the weights
    x, t, context = _inputs(2, (8, 8))
    maps = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        with MMDiTCapture(m) as capture:
            capture.begin_step([1], token_indicator([[5, 170]], context.shape[1]))
            with torch.no_grad():
                m(x.to(dtype), t, y=_pooled(m, 2).to(dtype), context=context.to(dtype))
            maps[dtype] = capture.take()
    assert maps[torch.bfloat16].dtype == torch.float32
    assert torch.allclose(maps[torch.bfloat16], maps[torch.float32], atol=2e-2)
    assert math.isfinite(float(maps[torch.bfloat16].sum()))


def test_flux_capture_reads_the_middle_quarter_of_its_blocks_exactly():
    """Forge's Flux (2 double + 6 single blocks here): with ``root`` the capture reads blocks 3-4 of the
    double-then-single sequence (single blocks 1-2), each exactly (rope applied, as the kernel does)."""
    from lib_degu.attention import JointAttentionCapture
    from tests.mmdit_reference import resize

    with forge_harness.installed():
        from backend.nn import flux

        from tests.fake_forge.tiny_flux import tiny_flux

        model = tiny_flux(0, depth=2, depth_single_blocks=6).requires_grad_(False)
    sequence = [*model.double_blocks, *model.single_blocks]
    assert mmdit_blocks(len(sequence)) == [3, 4]
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 12, 32, generator=gen)
    t, y, guidance = torch.full((2,), 0.7), torch.randn(2, 16, generator=gen), torch.full((2,), 3.5)
    recorded, current = [], {"block": -1}
    kernel = flux.attention

    def record(q, k, v, pe=None):
        if current["block"] >= 0 and q.shape[0] == 2:  # the model's calls, not the capture's (one row)
            recorded.append((current["block"], *flux.apply_rope(q, k, pe)))
        return kernel(q, k, v, pe=pe)

    handles = [b.register_forward_pre_hook(lambda m, a, i=i: current.update(block=i)) for i, b in enumerate(sequence)]
    flux.attention = record
    try:
        capture = JointAttentionCapture(flux, root=model)
        capture.begin_step([0], token_indicator([[2, 7]], 12))
        with torch.no_grad():
            capture.call([(1, 0)], 12, (8, 8), lambda: model(x, t, context=context, y=y, guidance=guidance))
        got = capture.take()
    finally:
        flux.attention = kernel
        for handle in handles:
            handle.remove()
    assert flux.attention is kernel and not any(b._forward_pre_hooks or b._forward_hooks for b in sequence)
    expected = torch.zeros(8, 8, dtype=torch.float64)
    for block, q, k in recorded:
        if block in (3, 4):
            probs = torch.softmax(q[1].double() @ k[1].double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
            mass = probs[:, 12:, [2, 7]].sum(-1).mean(0).view(1, 4, 4).float()
            expected += resize(mass, (8, 8))[0].double() / 2
    assert got is not None and torch.allclose(got[0].double(), expected, atol=1e-5)


def test_split_batch_calls_map_rows_by_offset(layout_model):
    """A1111 with ``batch_cond_uncond`` off: the same rows arrive in consecutive calls of one row each."""
    layout, model = layout_model
    x, t, context = _inputs(3, (8, 8))
    y = _pooled(model, 3)
    weights = token_indicator([[3, 170], [7]], context.shape[1])
    with MMDiTCapture(model) as capture, torch.no_grad():
        capture.begin_step([1, 2], weights)
        model(x, t, y=y, context=context)
        whole = capture.take()
        capture.begin_step([1, 2], weights)
        for row in range(3):
            model(x[row : row + 1], t[row : row + 1], y=y[row : row + 1], context=context[row : row + 1])
        split = capture.take()
    assert whole is not None and split is not None
    assert torch.allclose(whole, split, atol=1e-5)
