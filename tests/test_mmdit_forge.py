"""DeGu's attention mask on SD3.5 (medium with MMDiT-X blocks, and large) in the simulated Forge host
(MMDiTX of backend/nn/mmditx.py; crossattn = CLIP-L/G chunks then T5 tokens)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lib_degu.attention import find_mmdit, mmdit_blocks
from lib_degu.step import Guide
from tests.a1111_support import SCRIPT_PATH, script_args
from tests.fake_forge import harness
from tests.mmdit_reference import explicit_joint_map, recorded_joint_attention, sharpen_joint_attention

PURGE = ("lib_degu.hosts.forge", "degu_forge_script")
ON = {"enabled": True, "subject": "sks", "generic": "a"}
FULL = {**ON, "mask_source": "full"}
KINDS = ["sd35", "sd35-large"]


@pytest.fixture(autouse=True)
def forge():
    harness.install(also_purge=PURGE)
    try:
        spec = importlib.util.spec_from_file_location("degu_forge_script", SCRIPT_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        harness.uninstall()


def _run(script_module, host, degu=None, img2img=None, **kwargs):
    kwargs.setdefault("prompt", "a photo of sks dog on a beach")
    p = host.img2img(img2img, **kwargs) if img2img is not None else host.processing(**kwargs)
    scripts = [] if degu is None else [(script_module.DeGuScript(), script_args(**degu))]
    processed = host.run(p, *scripts)
    processed.p = p
    return torch.stack(list(processed.images)), processed


def _notes(processed):
    return [c for c in processed.p.comments if "unavailable" in c or "error" in c.lower()]


def _dit(host):
    return host.unet.model.diffusion_model


@pytest.mark.parametrize("kind", KINDS)
def test_identities_with_the_attention_mask(forge, kind):
    """Off: bit-identical. Mask 1, scales 1: the host. Balance -1 with the attention mask: plain CFG on
    the generic prompt (CFG 7 and 1, hires fix, img2img, a batch of two prompts); infotext: attention."""
    host = harness.make_host(kind)
    assert _dit(host).joint_blocks[2].x_block.x_block_self_attn == (kind == "sd35")  # MMDiT-X in a read block
    plain, _ = _run(forge, host)
    assert torch.equal(_run(forge, host, degu={**ON, "enabled": False})[0], plain)
    assert torch.allclose(_run(forge, host, degu=FULL)[0], plain, atol=1e-5)
    init = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_cfg": 5.0}
    for extra in ({}, {"cfg_scale": 1.0}, hires, {"img2img": init, "scheduler": "Simple"}):
        generic, _ = _run(forge, host, prompt="a photo of a dog on a beach", **extra)
        out, processed = _run(forge, host, degu={**ON, "balance": -1.0}, **extra)
        assert not _notes(processed), processed.p.comments
        assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
        assert torch.allclose(out, generic, atol=1e-4)
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    generic, _ = _run(forge, host, prompt=["a photo of a dog on a beach", "a cat in snow"], batch_size=2)
    out, processed = _run(forge, host, degu={**ON, "balance": -1.0}, prompt=prompts, batch_size=2)
    assert torch.allclose(out, generic, atol=1e-4)
    guided, processed = _run(forge, host, degu={**ON, "context_scale": 2.0}, prompt=prompts, batch_size=2)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention" and not _notes(processed)
    assert not torch.allclose(guided, _run(forge, host, prompt=prompts, batch_size=2)[0], atol=1e-3)


@pytest.mark.parametrize("t5", [False, True], ids=["t5-off", "t5-on"])
@pytest.mark.parametrize("kind", KINDS)
def test_map_is_each_images_prompt_row_joint_attention(forge, kind, t5, monkeypatch):
    """The map DeGu guides with is, per image, the explicit joint softmax of its prompt row over the
    middle blocks on the subject's CLIP key and, with ``sd3_enable_t5``, its T5 key (77 + index, no BOS)."""
    from modules import shared

    host = harness.make_host(kind)
    shared.opts.sd3_enable_t5 = t5
    dit = _dit(host)
    sharpen_joint_attention(dit)
    maps: list = []
    delta = Guide.delta
    monkeypatch.setattr(Guide, "delta", lambda self, *a, **k: maps.append(k["attention"]) or delta(self, *a, **k))
    contexts: list[torch.Tensor] = []
    handle = dit.register_forward_pre_hook(lambda m, a, k: contexts.append(k["context"].clone()), with_kwargs=True)
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    clip, t5_keys = [[4], [1]], [[77 + 3], [77 + 0]]
    try:
        with recorded_joint_attention(dit) as calls:
            _, processed = _run(forge, host, degu={**ON, "context_scale": 1.5}, prompt=prompts, batch_size=2, steps=1)
    finally:
        handle.remove()
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention" and not _notes(processed)
    assert len(maps) == 1 and maps[0].shape == (2, 8, 8) and len(contexts) == 1

    def row_of(text):
        cond = host.sd_model.get_learned_conditioning([text])["crossattn"][0]
        context = contexts[0]
        (row,) = [r for r in range(context.shape[0]) if torch.equal(context[r, : cond.shape[0]], cond)]
        return row

    blocks = mmdit_blocks(len(dit.joint_blocks))
    generics = ["a photo of a dog on a beach", "a cat in snow"]
    for image, (prompt, generic) in enumerate(zip(prompts, generics, strict=True)):
        keys = clip[image] + (t5_keys[image] if t5 else [])
        expected = explicit_joint_map(calls, row_of(prompt), keys, (8, 8), blocks)
        assert float((expected - explicit_joint_map(calls, row_of(generic), keys, (8, 8), blocks)).abs().max()) > 1e-2
        assert torch.allclose(maps[0][image].double(), expected, atol=1e-5)
        if t5:
            clip_only = explicit_joint_map(calls, row_of(prompt), clip[image], (8, 8), blocks)
            assert not torch.allclose(maps[0][image].double(), clip_only, atol=1e-4)


def test_patches_gone_after_each_call_an_exception_and_an_interrupt(forge):
    from modules import shared

    host = harness.make_host("sd35")
    dit = _dit(host)
    namespace = find_mmdit(dit)
    kernel = namespace["attention"]

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in dit.modules())

    before = hooks()
    seen = []

    def check(module, args, kwargs):  # inside a model call: our wrapper is on, outside it is not
        seen.append(namespace["attention"] is not kernel)

    handle = dit.register_forward_pre_hook(check, with_kwargs=True)
    try:
        _run(forge, host, degu={**ON, "context_scale": 2.0}, enable_hr=True, hr_scale=2.0)
    finally:
        handle.remove()
    assert seen and all(seen) and namespace["attention"] is kernel and hooks() == before
    calls = []

    def explode(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom mid-sampling")

    handle = dit.joint_blocks[mmdit_blocks(len(dit.joint_blocks))[0]].register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _run(forge, host, degu={**ON, "context_scale": 2.0})
    finally:
        handle.remove()
    assert namespace["attention"] is kernel and hooks() == before
    steps = []

    def interrupt(module, args, kwargs):
        steps.append(1)
        if len(steps) == 2:
            shared.state.interrupted = True

    handle = dit.register_forward_pre_hook(interrupt, with_kwargs=True)
    try:
        _run(forge, host, degu={**ON, "context_scale": 2.0}, steps=4)
    finally:
        handle.remove()
        shared.state.interrupted = False
    assert namespace["attention"] is kernel and hooks() == before
    plain, _ = _run(forge, host)
    assert torch.equal(_run(forge, host, degu={**ON, "enabled": False})[0], plain)


def test_unreadable_attention_falls_back_to_the_difference_mask_with_a_note(forge, monkeypatch):
    from lib_degu.hosts import forge as adapter

    host = harness.make_host("sd35")
    monkeypatch.setattr(adapter, "find_mmdit", lambda root: None)
    _, processed = _run(forge, host, degu={**ON, "context_scale": 2.0})
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"
    assert any("attention mask unavailable" in c and "cannot be read (MMDiTX)" in c for c in processed.p.comments)
