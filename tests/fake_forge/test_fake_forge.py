"""Tests of the simulated Forge host itself (not of the extension)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from tests.fake_forge import harness


@pytest.fixture(autouse=True)
def forge():
    harness.install()
    try:
        yield harness
    finally:
        harness.uninstall()


def make_script(**hooks):
    """An AlwaysOn script whose hooks are the given callables ``hook(p, *args, **kwargs)``."""
    from modules import scripts

    class HookScript(scripts.Script):
        def title(self):
            return "hooks"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

    for name, fn in hooks.items():
        setattr(HookScript, name, lambda self, *args, _fn=fn, **kwargs: _fn(*args, **kwargs))
    return HookScript()


def patch_unet(p, configure):
    """What a Forge extension does in process_before_every_sampling: clone, patch, put back."""
    unet = p.sd_model.forge_objects.unet.clone()
    configure(unet)
    p.sd_model.forge_objects.unet = unet
    return unet


def test_install_isolates_host_modules():
    from modules import shared

    assert shared.__file__.startswith(harness.ROOT) and torch.get_num_threads() == 1
    harness.uninstall()
    sentinel = type(sys)("modules")
    sys.modules["modules"] = sentinel
    try:
        assert not harness.is_installed() and harness.ROOT not in sys.path
        assert "modules.shared" not in sys.modules and "backend" not in sys.modules
        with harness.installed():
            import modules.shared

            assert modules.shared is shared  # the same module objects come back
            with harness.installed():  # nests
                pass
            assert sys.modules["modules"] is not sentinel and sys.path[0] == harness.ROOT
        assert sys.modules["modules"] is sentinel
    finally:
        sys.modules.pop("modules", None)
        harness.install()


def test_txt2img_sd15_is_deterministic():
    host = harness.make_host("sd15")
    first = host.run(host.processing(seed=3, batch_size=2))
    second = host.run(host.processing(seed=3, batch_size=2))
    other = host.run(host.processing(seed=4, batch_size=2))
    assert len(first.images) == 2 and first.images[0].shape == (4, 8, 8)
    assert all(torch.isfinite(image).all() for image in first.images)
    assert all(torch.equal(a, b) for a, b in zip(first.images, second.images, strict=True))
    assert not torch.equal(first.images[0], other.images[0])
    assert first.infotexts[0].startswith("a photo of a cat\nSteps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 3")


def test_sd15_conds_and_tokens():
    from modules import prompt_parser, shared

    harness.make_host("sd15")
    engine = shared.sd_model.text_processing_engine
    chunks, count = engine.tokenize_line("a photo of a cat")
    assert len(chunks) == 1 and len(chunks[0].tokens) == 77 and count == 5
    assert chunks[0].tokens[0] == engine.id_start and chunks[0].tokens[6] == engine.id_end
    long_chunks, _ = engine.tokenize_line(", ".join(["a red cat"] * 30))
    assert len(long_chunks) == 2
    with torch.inference_mode():
        cond = shared.sd_model.get_learned_conditioning(
            prompt_parser.SdConditioning(["a cat", ", ".join(["x y"] * 40)])
        )
    assert cond.shape == (2, 154, 32)
    indexes, flat, _ = prompt_parser.get_multicond_prompt_list(["a cat AND a dog :0.5", "a cat"])
    assert indexes == [[(0, 1.0), (1, 0.5)], [(0, 1.0)]] and list(flat) == ["a cat", " a dog"]


def test_flux_cfg1_runs_without_uncond():
    from backend.nn import flux as flux_nn

    host = harness.make_host("flux")
    seen = {"cond_or_uncond": [], "guidance": [], "attention": []}
    original_attention = flux_nn.attention

    def attention(q, k, v, pe=None):
        seen["attention"].append(q.shape)
        return original_attention(q, k, v, pe=pe)

    def wrapper(apply_model, args):
        seen["cond_or_uncond"].append(list(args["cond_or_uncond"]))
        seen["guidance"].append(args["c"]["guidance"])
        return apply_model(args["input"], args["timestep"], **args["c"])

    def before_sampling(p, *args, **kwargs):
        patch_unet(p, lambda unet: unet.set_model_unet_function_wrapper(wrapper))

    flux_nn.attention = attention
    try:
        p = host.processing(distilled_cfg_scale=2.5)
        processed = host.run(p, make_script(process_before_every_sampling=before_sampling))
    finally:
        flux_nn.attention = original_attention
    assert p.uc is None and p.cfg_scale == 1.0
    assert seen["cond_or_uncond"] == [[0]] * 3
    assert all(torch.equal(g, torch.tensor([2.5])) for g in seen["guidance"])
    # 2 double blocks + 1 single block per call; T5 context (256 tokens) first, then 4x4 image tokens
    assert seen["attention"] == [torch.Size([1, 2, 256 + 16, 16])] * 9
    assert processed.images[0].shape == (16, 8, 8) and torch.isfinite(processed.images[0]).all()
    assert "Distilled CFG Scale: 2.5" in processed.infotexts[0]


def test_zero_strength_extra_cond_is_bit_identical():
    from backend.sampling.condition import ConditionCrossAttn

    for kind, cfg in (("sd15", 7.0), ("flux", 1.0)):
        host = harness.make_host(kind)
        plain = host.run(host.processing(batch_size=2, cfg_scale=cfg))
        calls = []

        def modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
            extra = dict(cond[0])
            conds = dict(extra["model_conds"])
            conds["c_crossattn"] = ConditionCrossAttn(cond[0]["cross_attn"] * -2.0 + 0.5)
            extra["model_conds"], extra["strength"] = conds, 0.0
            return model, x, timestep, uncond, cond + [extra], cond_scale, model_options, seed

        def wrapper(apply_model, args, calls=calls):
            calls.append(list(args["cond_or_uncond"]))
            return apply_model(args["input"], args["timestep"], **args["c"])

        def configure(unet):
            unet.add_conditioning_modifier(modifier)
            unet.set_model_unet_function_wrapper(wrapper)

        script = make_script(process_before_every_sampling=lambda p, *a, **k: patch_unet(p, configure))
        extra = host.run(host.processing(batch_size=2, cfg_scale=cfg), script)
        assert calls[0] == ([1, 0, 0] if cfg != 1.0 else [0, 0])  # one batched call: [uncond, extra, cond]
        assert all(torch.equal(a, b) for a, b in zip(plain.images, extra.images, strict=True)), kind


def test_free_memory_splitting_gives_the_same_result():
    from backend.sampling import sampling_function

    host = harness.make_host("sd15")
    calls = []

    def wrapper(apply_model, args):
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    script = make_script(
        process_before_every_sampling=lambda p, *a, **k: patch_unet(
            p, lambda u: u.set_model_unet_function_wrapper(wrapper)
        )
    )
    prompt = "a photo of a cat AND a red hat :0.7"
    whole = host.run(host.processing(prompt=prompt, batch_size=2), script)
    assert calls == [[1, 0, 0]] * 3
    calls.clear()
    one_entry = host.unet.model.memory_required([2, 4, 8, 8])
    sampling_function.FREE_MEMORY = one_entry + 1  # only one entry (2 rows) fits per call
    split = host.run(host.processing(prompt=prompt, batch_size=2), script)
    assert calls == [[1], [0], [0]] * 3
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole.images, split.images, strict=True))


def test_post_cfg_function_gets_the_documented_args():
    host = harness.make_host("sd15")
    received = []

    def post_cfg(args):
        received.append(args)
        return args["denoised"]

    def configure(unet):
        unet.set_model_sampler_post_cfg_function(post_cfg)

    p = host.processing()
    host.run(p, make_script(process_before_every_sampling=lambda p, *a, **k: patch_unet(p, configure)))
    assert len(received) == 3
    args = received[0]
    assert set(args) == {
        "denoised",
        "cond",
        "uncond",
        "model",
        "uncond_denoised",
        "cond_denoised",
        "sigma",
        "model_options",
        "input",
    }
    assert isinstance(args["cond"], list) and args["cond"][0]["strength"] == 1.0
    assert "c_crossattn" in args["cond"][0]["model_conds"] and isinstance(args["uncond"], list)
    assert args["model"] is host.unet.model and args["denoised"].shape == args["input"].shape == (1, 4, 8, 8)
    assert args["model_options"]["sampler_post_cfg_function"] == [post_cfg]


def test_clone_deep_copies_model_options():
    host = harness.make_host("sd15")
    unet = host.unet.clone()

    class Hook:
        def method(self, args):
            return args["denoised"]

    class Shared:
        def __deepcopy__(self, memo):
            return self

    hook, shared_state = Hook(), Shared()

    def closure(args):
        return args["denoised"]

    unet.set_model_sampler_post_cfg_function(closure)
    unet.set_model_sampler_post_cfg_function(hook.method)
    unet.add_conditioning_modifier(closure)
    unet.model_options["transformer_options"]["state"] = shared_state
    before = unet.model_options["sampler_post_cfg_function"]
    clone = unet.clone()
    post = clone.model_options["sampler_post_cfg_function"]
    assert post is not before and post[0] is closure
    assert post[1].__self__ is not hook  # bound methods deep-copy their instance, as in Forge
    assert clone.model_options["transformer_options"]["state"] is shared_state
    assert clone.model_options["conditioning_modifiers"] is not unet.model_options["conditioning_modifiers"]
    clone.set_model_sampler_post_cfg_function(closure)  # builds a new list
    assert len(unet.model_options["sampler_post_cfg_function"]) == 2
    assert clone.model is unet.model and host.unet.model_options == {"transformer_options": {}}
    assert copy.deepcopy(shared_state) is shared_state


def test_hires_pass_order_and_resets():
    from backend.sampling import sampling_function

    host = harness.make_host("sd15")
    seen = []

    def before_sampling(p, *args, **kwargs):
        seen.append((p.is_hr_pass, p.sd_model.forge_objects.unet is host.unet, tuple(kwargs["x"].shape)))
        unet = patch_unet(p, lambda u: u.set_memory_peak_estimation_modifier(lambda shape: 123.0))
        assert unet is not host.unet

    cond_scales = []

    def post_cfg(args):
        return args["denoised"]

    def on_denoiser(params):
        cond_scales.append(params.denoiser.p.is_hr_pass)

    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_denoiser)
    p = host.processing(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, hr_cfg=1.0)
    processed = host.run(p, make_script(process_before_every_sampling=before_sampling))
    # first pass once; hires twice: the first hires call still sees the first pass's clone
    assert seen == [(False, True, (1, 4, 8, 8)), (True, False, (1, 4, 16, 16)), (True, True, (1, 4, 16, 16))]
    assert p.hr_uc is None and processed.images[0].shape == (4, 16, 16)
    assert sampling_function.LAST_MEMORY_REQUEST == [2, 4, 16, 16] and sampling_function.LAST_MEMORY_ESTIMATE == 123.0
    assert cond_scales.count(False) == 3 and cond_scales.count(True) == 2
    script_callbacks.remove_callbacks_for_function(on_denoiser)
    # (an extension's own global callback, e.g. DeGu's, may stay registered)
    assert on_denoiser not in [c.callback for c in script_callbacks.callback_map["callbacks_cfg_denoiser"]]


def test_script_errors_are_reported_sampling_errors_propagate():
    from modules import errors

    host = harness.make_host("sd15")

    def broken(p, *args, **kwargs):
        raise ValueError("boom")

    processed = host.run(host.processing(), make_script(process=broken, process_before_every_sampling=broken))
    assert len(processed.images) == 1
    assert any("process_before_every_sampling" in message for message in errors.reported)

    def bad_post_cfg(args):
        raise RuntimeError("sampling failed")

    script = make_script(
        process_before_every_sampling=lambda p, *a, **k: patch_unet(
            p, lambda u: u.set_model_sampler_post_cfg_function(bad_post_cfg)
        )
    )
    with pytest.raises(RuntimeError, match="sampling failed"):
        host.run(host.processing(), script)


def test_skip_early_cond_interrupt_and_img2img_mask():
    from modules import script_callbacks, shared

    host = harness.make_host("sd15")
    calls = []

    def wrapper(apply_model, args):
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    def before_sampling(p, *args, **kwargs):
        patch_unet(p, lambda u: u.set_model_unet_function_wrapper(wrapper))

    shared.opts.skip_early_cond = 0.4  # steps 0 and 1 of 3 (step/total <= 0.4) run without uncond
    processed = host.run(host.processing(), make_script(process_before_every_sampling=before_sampling))
    assert calls == [[0], [0], [1, 0]]
    assert "Skip Early CFG: 0.4" in processed.infotexts[0]
    shared.opts.data.clear()

    def interrupt(params):
        if params.denoiser.step == 1:
            shared.state.interrupted = True

    script_callbacks.on_cfg_denoiser(interrupt)
    try:
        calls.clear()
        host.run(host.processing(), make_script(process_before_every_sampling=before_sampling))
        assert len(calls) == 2  # set during the 2nd evaluation: the 3rd raises InterruptedException, caught
    finally:
        script_callbacks.remove_callbacks_for_function(interrupt)
        shared.state.reset()

    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0  # repaint the right half
    processed = host.run(host.img2img(init, denoising_strength=0.5))
    assert torch.isfinite(processed.images[0]).all()
    masked = host.run(host.img2img(init, denoising_strength=0.5, image_mask=mask))
    assert torch.equal(masked.images[0][..., :4], init[0, :, :, :4])
    assert not torch.equal(masked.images[0][..., 4:], init[0, :, :, 4:])
