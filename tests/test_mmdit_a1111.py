"""DeGu's attention mask on SD3 in the simulated A1111 1.10.1 host (MM-DiT of
modules/models/sd3/mmdit.py, CLIP-L/G chunks then T5 tokens in one crossattn)."""

from __future__ import annotations

import pytest
import torch

from lib_degu.attention import find_mmdit, mmdit_blocks
from lib_degu.step import Guide
from tests import a1111_support
from tests.a1111_support import run, script_callbacks, shared, unet_hook_count
from tests.fake_a1111 import harness
from tests.mmdit_reference import explicit_joint_map, recorded_joint_attention, sharpen_joint_attention

ON = {"enabled": True, "subject": "sks", "generic": "a"}
FULL = {**ON, "mask_source": "full"}


@pytest.fixture
def sd3():
    with harness.host_session(seed=0, arch="sd3") as model:
        yield model


def _notes(processed):
    return [c for c in processed.p.comments if "unavailable" in c or "error" in c.lower()]


def test_identities_with_the_attention_mask(sd3):
    """Off: bit-identical. Mask 1, scales 1: the host. Balance -1 with the attention mask: plain CFG on
    the generic prompt (first pass, hires fix, a batch of two prompts). The infotext says attention."""
    plain = run(None).latents
    assert torch.equal(run({**ON, "enabled": False}).latents, plain)
    assert torch.allclose(run(FULL).latents, plain, atol=1e-4)
    for hires in (False, True):
        generic_plain = run(None, prompt="a photo of a dog on a beach", enable_hr=hires).latents
        generic = run({**ON, "balance": -1.0}, enable_hr=hires)
        assert not _notes(generic)
        assert generic.p.extra_generation_params["DeGu mask used"] == "attention"
        assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    generic_plain = run(None, prompt=["a photo of a dog on a beach", "a cat in snow"], batch_size=2).latents
    generic = run({**ON, "balance": -1.0}, prompt=prompts, batch_size=2)
    assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
    guided = run({**ON, "context_scale": 2.0}, prompt=prompts, batch_size=2)
    assert guided.p.extra_generation_params["DeGu mask used"] == "attention" and not _notes(guided)
    assert not torch.allclose(guided.latents, run(None, prompt=prompts, batch_size=2).latents, atol=1e-3)


@pytest.mark.parametrize("t5", [False, True], ids=["t5-off", "t5-on"])
def test_map_is_each_images_prompt_row_joint_attention(sd3, t5, monkeypatch):
    """The map DeGu guides with is, per image, the explicit joint softmax of its prompt row (rows 0-1;
    the generic rows 2-3 attend differently) over the middle blocks, on the subject's CLIP key and,
    with T5 on (``sd3_enable_t5``), also its T5 key (T5 part from 77 on, no BOS)."""
    shared.opts.sd3_enable_t5 = t5
    dit = sd3.model.diffusion_model
    sharpen_joint_attention(dit)
    maps: list = []
    delta = Guide.delta
    monkeypatch.setattr(Guide, "delta", lambda self, *a, **k: maps.append(k["attention"]) or delta(self, *a, **k))
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    clip, t5_keys = [[4], [1]], [[77 + 3], [77 + 0]]
    with recorded_joint_attention(dit) as calls:
        processed = run({**ON, "context_scale": 1.5}, prompt=prompts, batch_size=2, steps=1)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention" and not _notes(processed)
    assert len(maps) == 1 and maps[0].shape == (2, 8, 8)
    blocks = mmdit_blocks(len(dit.joint_blocks))
    for image in range(2):
        keys = clip[image] + (t5_keys[image] if t5 else [])
        expected = explicit_joint_map(calls, image, keys, (8, 8), blocks, call_rows=6)
        generic_row = explicit_joint_map(calls, 2 + image, keys, (8, 8), blocks, call_rows=6)
        assert float((expected - generic_row).abs().max()) > 1e-2
        assert torch.allclose(maps[0][image].double(), expected, atol=1e-5)
        if t5:  # the T5 key does count
            clip_only = explicit_joint_map(calls, image, clip[image], (8, 8), blocks, call_rows=6)
            assert not torch.allclose(maps[0][image].double(), clip_only, atol=1e-4)


def test_patches_gone_after_a_pass_an_exception_and_an_interrupt(sd3):
    dit = sd3.model.diffusion_model
    namespace = find_mmdit(dit)
    kernel, before = namespace["attention"], unet_hook_count(dit)
    with a1111_support.created_samplers() as samplers:
        run({**ON, "context_scale": 2.0}, enable_hr=True)
        assert namespace["attention"] is kernel and unet_hook_count(dit) == before
        calls = []

        def explode(module, args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("boom mid-sampling")

        handle = dit.joint_blocks[mmdit_blocks(len(dit.joint_blocks))[0]].register_forward_pre_hook(explode)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                run({**ON, "context_scale": 2.0})
        finally:
            handle.remove()
        assert namespace["attention"] is kernel and unet_hook_count(dit) == before
        interrupt = lambda params: shared.state.interrupt() if params.denoiser.step == 1 else None  # noqa: E731
        script_callbacks.on_cfg_denoiser(interrupt, name="interrupt")
        try:
            run({**ON, "context_scale": 2.0})
            assert shared.state.interrupted
        finally:
            script_callbacks.remove_callbacks_for_function(interrupt)
            shared.state.interrupted = False
    assert namespace["attention"] is kernel and unet_hook_count(dit) == before
    for sampler in samplers:
        a1111_support.assert_sampler_clean(sampler)
    assert torch.equal(run({**ON, "enabled": False}).latents, run(None).latents)


def test_unreadable_attention_falls_back_to_the_difference_mask_with_a_note(sd3, monkeypatch):
    """A DiT the adapter does not recognise (``find_mmdit`` finds no joint blocks): difference mask, said once."""
    monkeypatch.setattr(a1111_support.adapter, "find_mmdit", lambda root: None)
    processed = run({**ON, "context_scale": 2.0})
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"
    notes = [c for c in processed.p.comments if "attention mask unavailable" in c]
    assert notes == ["DeGu: attention mask unavailable (this model has no attention layers DeGu can read); "
                     "using the difference mask."]
