"""The attention mask on Forge Neo's Qwen-Image and NextDiT (Lumina 2, Z-Image) against an explicit
float64 softmax, on tiny random-weight models of their layouts (tests/fake_neo/backend/nn/qwen.py and
lumina.py, each naming the Neo file and commit it mirrors)."""

from __future__ import annotations

import math

import pytest
import torch

from lib_degu.attention import (
    NEXT_DIT_LAYOUT,
    QWEN_IMAGE_LAYOUT,
    JointAttentionCapture,
    find_joint_dit,
    joint_blocks,
    mmdit_blocks,
    token_indicator,
)
from lib_degu.mask import resize
from tests.fake_neo import harness

SUBJECT = [2, 7]  # key positions of the subject in a 12-token prompt


def _model(kind: str, seed: int = 0, pad: int | None = 8):
    with harness.installed():
        if kind == "qwen":
            from backend.nn import qwen as module

            torch.manual_seed(seed)
            model = module.QwenImageTransformer2DModel(num_layers=8)
        else:
            from backend.nn import lumina as module

            torch.manual_seed(seed)
            model = module.NextDiT(n_layers=8, pad_tokens_multiple=pad)
    return module, model.eval().requires_grad_(False)


def _record(module, model, run):
    """Post-rope (q, k) of every kernel call inside each joint block, in the kernel's own layout."""
    kernel, recorded, current = module.attention_function, [], {"block": -1}
    blocks = joint_blocks(model)

    def record(q, k, v, heads, mask=None, **kwargs):
        if current["block"] >= 0:
            recorded.append((current["block"], q, k, heads))
        return kernel(q, k, v, heads, mask, **kwargs)

    handles = [b.register_forward_pre_hook(lambda m, a, i=i: current.update(block=i)) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(lambda m, a, o: current.update(block=-1)) for b in blocks]
    module.attention_function = record
    try:
        with torch.no_grad():
            run()
    finally:
        module.attention_function = kernel
        for handle in handles:
            handle.remove()
    return recorded


def _explicit(recorded, row, chosen, text, image_hw, subject, latent_hw, heads_first):
    """Mean over the chosen blocks and heads of each image token's softmax mass on ``subject`` keys."""
    expected = torch.zeros(latent_hw, dtype=torch.float64)
    tokens = image_hw[0] * image_hw[1]
    for block, q, k, heads in recorded:
        if block not in chosen:
            continue
        if not heads_first:
            q = q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
            k = k.view(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)
        probs = torch.softmax(q[row].double() @ k[row].double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        mass = probs[:, text : text + tokens][..., subject].sum(-1).mean(0).view(1, *image_hw).float()
        expected += resize(mass, latent_hw)[0].double() / len(chosen)
    return expected


def test_qwen_image_and_next_dit_are_found_with_their_layouts():
    qwen_module, qwen = _model("qwen")
    lumina_module, next_dit = _model("lumina", pad=8)
    found = find_joint_dit(qwen)
    assert found is not None and found[0] is vars(qwen_module) and found[1] == QWEN_IMAGE_LAYOUT
    found = find_joint_dit(next_dit)
    assert found is not None and found[0] is vars(lumina_module) and found[1].text_multiple == 8
    assert found[1].attribute == NEXT_DIT_LAYOUT.attribute == "attention_function"
    # the refiners are not part of the read sequence: 8 joint layers, the middle quarter
    assert len(joint_blocks(next_dit)) == 8 and mmdit_blocks(8) == [3, 4]
    with harness.installed():
        from tests.fake_neo.tiny_dit import tiny_joint_dit

        assert find_joint_dit(tiny_joint_dit()) is None  # its own kernel: nothing to patch


@pytest.mark.parametrize("latent_hw", [(8, 8), (6, 10)])
def test_qwen_image_map_equals_explicit_softmax(latent_hw):
    """Text first, q/k/v flattened (B, L, heads*D), rope before the kernel: blocks 3-4 of 8, image
    tokens only, row 1 of a batch of 2."""
    module, model = _model("qwen")
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 16, *latent_hw, generator=gen), torch.randn(2, 12, 32, generator=gen)
    t = torch.full((2,), 0.6)
    found, kernel = find_joint_dit(model), module.attention_function
    capture = JointAttentionCapture(found[0], root=model, layout=found[1])
    capture.begin_step([0], token_indicator([SUBJECT], 12))
    with torch.no_grad():
        capture.call([(1, 0)], 12, latent_hw, lambda: model(x, t, context))
    got = capture.take()
    assert module.attention_function is kernel  # restored
    recorded = _record(module, model, lambda: model(x, t, context))
    image_hw = (math.ceil(latent_hw[0] / 2), math.ceil(latent_hw[1] / 2))
    expected = _explicit(recorded, 1, [3, 4], 12, image_hw, SUBJECT, latent_hw, heads_first=False)
    assert got is not None and torch.allclose(got[0].double(), expected, atol=1e-5)


@pytest.mark.parametrize(("pad", "latent_hw"), [(None, (8, 8)), (8, (6, 6))])
def test_next_dit_map_equals_explicit_softmax_past_the_padding_and_refiners(pad, latent_hw):
    """Lumina 2 (no padding) and Z-Image (caption 12 -> 16 keys, 9 image tokens -> 16, both with
    learned pad tokens): only the joint ``layers`` are read, at their image tokens; the padded
    caption keys are keys but never the subject."""
    module, model = _model("lumina", pad=pad)
    gen = torch.Generator().manual_seed(2)
    x, context = torch.randn(2, 16, *latent_hw, generator=gen), torch.randn(2, 12, 32, generator=gen)
    t = torch.full((2,), 0.4)
    found = find_joint_dit(model)
    capture = JointAttentionCapture(found[0], root=model, layout=found[1])
    capture.begin_step([0], token_indicator([SUBJECT], 12))
    with torch.no_grad():
        capture.call([(1, 0)], 12, latent_hw, lambda: model(x, t, context))
    got = capture.take()
    recorded = _record(module, model, lambda: model(x, t, context))
    text = 16 if pad else 12
    assert all(q.shape[2] == text + 16 for b, q, k, h in recorded if b in (3, 4))  # 16 image tokens, padded or not
    image_hw = (latent_hw[0] // 2, latent_hw[1] // 2)
    expected = _explicit(recorded, 1, [3, 4], text, image_hw, SUBJECT, latent_hw, heads_first=True)
    assert got is not None and torch.allclose(got[0].double(), expected, atol=1e-5)


def test_a_text_tiled_by_the_batcher_counts_every_copy_of_the_subject():
    """Forge batches conds of different lengths by repeating each to their least common multiple: the
    prompt's 12 tokens arrive as 24 keys, and the subject's mass is that of both copies (they sit at
    different rope positions in Qwen-Image, so the copies draw different attention)."""
    module, model = _model("qwen")
    gen = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 12, 32, generator=gen)
    tiled, t = context.repeat(1, 2, 1), torch.full((1,), 0.5)
    found = find_joint_dit(model)
    capture = JointAttentionCapture(found[0], root=model, layout=found[1])
    capture.begin_step([0], token_indicator([SUBJECT], 12))  # as wide as the prompt's own conditioning
    with torch.no_grad():
        capture.call([(0, 0)], 24, (8, 8), lambda: model(x, t, tiled))
    got = capture.take()
    recorded = _record(module, model, lambda: model(x, t, tiled))
    both = SUBJECT + [p + 12 for p in SUBJECT]
    expected = _explicit(recorded, 0, [3, 4], 24, (4, 4), both, (8, 8), heads_first=False)
    first_only = _explicit(recorded, 0, [3, 4], 24, (4, 4), SUBJECT, (8, 8), heads_first=False)
    assert got is not None and torch.allclose(got[0].double(), expected, atol=1e-5)
    assert not torch.allclose(expected, first_only, atol=1e-3)


def test_the_kernel_is_restored_after_an_exception_inside_the_model():
    module, model = _model("lumina")
    kernel = module.attention_function
    found = find_joint_dit(model)
    capture = JointAttentionCapture(found[0], root=model, layout=found[1])
    capture.begin_step([0], token_indicator([SUBJECT], 12))

    def failing():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        capture.call([(0, 0)], 12, (8, 8), failing)
    assert module.attention_function is kernel
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in joint_blocks(model))
