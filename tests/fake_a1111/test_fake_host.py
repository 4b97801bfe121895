"""Checks of the simulated A1111 1.10.1 host itself (tests/fake_a1111)."""

from __future__ import annotations

import pytest
import torch

from tests.fake_a1111 import harness

with harness.installed():
    from modules import errors, prompt_parser, script_callbacks, shared
    from modules.sd_samplers_cfg_denoiser import CFGDenoiser


@pytest.fixture
def host():
    with harness.host_session(seed=0) as model:
        yield model


@pytest.fixture
def callbacks():
    """Registers callbacks for one test and removes them afterwards."""
    added = []

    def add(kind: str, fn):
        getattr(script_callbacks, f"on_{kind}")(fn, name="fake-host-test")
        added.append(fn)
        return fn

    yield add
    for fn in added:
        script_callbacks.remove_callbacks_for_function(fn)


def run(**kwargs) -> harness.FakeProcessed:
    kwargs.setdefault("prompt", "a photo of a dog")
    kwargs.setdefault("negative_prompt", "blurry")
    kwargs.setdefault("steps", 4)
    return harness.txt2img(harness.FakeProcessing(**kwargs))


def test_fake_modules_are_only_visible_while_installed():
    import sys

    from tests.fake_a1111 import ROOT

    def ours_loaded():
        return [n for n, m in sys.modules.items() if (getattr(m, "__file__", None) or "").startswith(ROOT + "/modules")]

    assert not harness.is_installed() and not ours_loaded() and ROOT not in sys.path
    with harness.installed():
        import modules.shared

        assert modules.shared is shared  # the same objects again after a re-install
        assert modules.shared.opts.batch_cond_uncond is True
        assert sys.modules["modules.sd_samplers_cfg_denoiser"].CFGDenoiser is CFGDenoiser
    assert not ours_loaded() and ROOT not in sys.path


def test_txt2img_is_deterministic(host):
    first = run(seed=1).latents
    second = run(seed=1).latents
    other = run(seed=2).latents
    assert first.shape == (1, 4, 8, 8) and first.dtype == torch.float32 and first.device.type == "cpu"
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_and_prompt_gives_one_cond_row_per_part(host, callbacks):
    seen = []

    def record(params):
        cond = params.denoiser.sampler.sampler_extra_args["cond"]
        conds_list, _ = prompt_parser.reconstruct_multicond_batch(cond, params.denoiser.step)
        seen.append((params.text_cond.shape[0], params.text_uncond.shape[0], params.x.shape[0], conds_list))

    callbacks("cfg_denoiser", record)
    run(prompt=["a cat AND a dog:0.5", "a bird"], negative_prompt="", batch_size=2, steps=3)
    assert len(seen) == 3
    text_rows, uncond_rows, x_rows, conds_list = seen[0]
    assert (text_rows, uncond_rows, x_rows) == (3, 2, 5)
    assert conds_list == [[(0, 1.0), (1, 0.5)], [(2, 1.0)]]


def test_batch_cond_uncond_off_matches_batched(host):
    batched = run(seed=3, batch_size=2, prompt="a cat AND a dog").latents
    shared.opts.batch_cond_uncond = False
    chunked = run(seed=3, batch_size=2, prompt="a cat AND a dog").latents
    assert torch.allclose(batched, chunked, rtol=1e-4, atol=1e-4)


def test_unequal_token_lengths_take_the_split_path(host, callbacks):
    long_prompt = " ".join(["dog"] * 80)  # 2 chunks vs the 1-chunk negative prompt
    shapes = []
    callbacks("cfg_denoiser", lambda params: shapes.append((params.text_cond.shape, params.text_uncond.shape)))
    result = run(prompt=long_prompt, steps=2)
    assert shapes[0] == (torch.Size([1, 154, 32]), torch.Size([1, 77, 32]))
    assert torch.isfinite(result.latents).all()


def test_skip_early_cond_skips_uncond_rows(host, callbacks):
    unet_rows = []
    denoised = []
    handle = host.model.diffusion_model.register_forward_pre_hook(lambda m, args: unet_rows.append(args[0].shape[0]))
    callbacks("cfg_denoised", lambda params: denoised.append(params.x.clone()))
    try:
        shared.opts.skip_early_cond = 0.5
        p = harness.FakeProcessing(prompt="a dog", negative_prompt="blurry", steps=4)
        harness.txt2img(p)
    finally:
        handle.remove()
    # calls 0, 1, 2 have step/total_steps <= 0.5: cond row only; call 3 runs cond + uncond
    assert unet_rows == [1, 1, 1, 2]
    assert all(torch.equal(x[0], x[1]) for x in denoised[:3])  # fake uncond = cond output
    assert not torch.equal(denoised[3][0], denoised[3][1])
    assert p.extra_generation_params["Skip Early CFG"] == 0.5


def test_noop_denoiser_callback_is_bit_identical(host, callbacks):
    reference = run(seed=4, batch_size=2).latents

    def reassign(params):
        params.x, params.sigma, params.image_cond = params.x, params.sigma, params.image_cond
        params.text_cond, params.text_uncond = params.text_cond, params.text_uncond

    callbacks("cfg_denoiser", reassign)
    assert torch.equal(run(seed=4, batch_size=2).latents, reference)


def test_extra_rows_before_uncond_are_ignored_by_combine(host, callbacks):
    reference = run(seed=5, batch_size=2).latents

    def add_rows(params):
        n = params.text_cond.shape[0]
        extra = torch.zeros_like(params.text_cond[:2])
        params.x = torch.cat([params.x[:n], params.x[n:], params.x[n:]])
        params.sigma = torch.cat([params.sigma[:n], params.sigma[n:], params.sigma[n:]])
        params.image_cond = torch.cat([params.image_cond[:n], params.image_cond[n:], params.image_cond[n:]])
        params.text_cond = torch.cat([params.text_cond, extra])

    callbacks("cfg_denoiser", add_rows)
    assert torch.allclose(run(seed=5, batch_size=2).latents, reference, rtol=1e-4, atol=1e-4)


def test_combine_denoised_instance_override_is_used(host):
    calls = []

    class Script:
        def process_before_every_sampling(self, p, *args, **kwargs):
            denoiser = p.sampler.model_wrap_cfg

            def combine(x_out, conds_list, uncond, cond_scale):
                calls.append(cond_scale)
                return CFGDenoiser.combine_denoised(denoiser, x_out, conds_list, uncond, cond_scale)

            denoiser.combine_denoised = combine

    run(scripts=[Script()], cfg_scale=5.0, steps=3)
    assert calls == [5.0, 5.0, 5.0]


def test_hires_pass_makes_hr_size_latent_and_calls_hooks_in_order(host):
    events = []

    class Script:
        args_from, args_to, filename, setup_for_ui_only = None, None, "recorder", False

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def hook(p, *args, **kwargs):
                x = kwargs.get("x")
                events.append((name, p.is_hr_pass, None if x is None else tuple(x.shape[-2:]), args))

            return hook

    result = run(scripts=[Script()], script_args=["a", "b"], enable_hr=True, hr_second_pass_steps=2, seed=6)
    assert result.latents.shape == (1, 4, 16, 16)
    assert [e[0] for e in events] == [
        "setup",
        "before_process",
        "process",
        "before_process_batch",
        "process_batch",
        "process_before_every_sampling",
        "before_hr",
        "process_before_every_sampling",
        "post_sample",
        "postprocess_batch",
        "postprocess",
    ]
    first, second = [e for e in events if e[0] == "process_before_every_sampling"]
    assert first[1:3] == (False, (8, 8)) and second[1:3] == (True, (16, 16))
    assert first[3] == ("a", "b")


def test_script_and_callback_errors_are_reported_not_raised(host, callbacks):
    class Broken:
        def process(self, p, *args):
            raise ValueError("script boom")

    def broken_callback(params):
        raise ValueError("callback boom")

    errors.exception_records.clear()
    callbacks("cfg_after_cfg", broken_callback)
    result = run(scripts=[Broken()], seed=7)
    assert torch.isfinite(result.latents).all()
    messages = [str(r["exception"]) for r in errors.exception_records]
    assert "script boom" in messages and "callback boom" in messages


def test_sampling_errors_propagate_and_close_p(host):
    class Sabotage:
        def process_before_every_sampling(self, p, *args, **kwargs):
            def combine(*a):
                raise RuntimeError("sampling boom")

            p.sampler.model_wrap_cfg.combine_denoised = combine

    p = harness.FakeProcessing(prompt="a dog", steps=2, scripts=[Sabotage()])
    with pytest.raises(RuntimeError, match="sampling boom"):
        harness.txt2img(p)
    assert p.sampler is None and p.c is None


def test_interrupt_returns_last_latent(host, callbacks):
    latents, current = [], {}

    def grab(params):
        current["denoiser"] = params.denoiser

    def interrupt(params):
        denoiser = current["denoiser"]
        latents.append(denoiser.sampler.last_latent)
        if denoiser.step == 1:
            shared.state.interrupt()

    callbacks("cfg_denoiser", grab)
    callbacks("cfg_after_cfg", interrupt)
    result = run(seed=8, steps=4)
    assert len(latents) == 2
    assert torch.equal(result.latents, latents[-1])


def test_prompt_editing_switches_cond_and_conds_are_cached(host, callbacks):
    conds = []
    callbacks("cfg_denoiser", lambda params: conds.append(params.text_cond.clone()))
    p = harness.FakeProcessing(prompt="a [cat:dog:2] photo", steps=4)
    harness.txt2img(p)
    assert torch.equal(conds[0], conds[2]) and not torch.equal(conds[2], conds[3])

    cache = [None, None]
    texts = prompt_parser.SdConditioning(["a dog"], width=64, height=64)
    first = p.get_conds_with_caching(prompt_parser.get_learned_conditioning, texts, 4, [cache], {})
    again = p.get_conds_with_caching(prompt_parser.get_learned_conditioning, texts, 4, [cache], {})
    other = p.get_conds_with_caching(prompt_parser.get_learned_conditioning, texts, 5, [cache], {})
    assert again is first and other is not first
    assert harness.FakeProcessing.cached_c[1] is not None  # class-level, persistent by default


def test_tokenize_line_layout(host):
    chunks, token_count = host.cond_stage_model.tokenize_line("a (photo:1.2) of emb_v2 BREAK sky")
    assert len(chunks) == 2 and all(len(c.tokens) == 77 and len(c.multipliers) == 77 for c in chunks)
    first = chunks[0]
    assert first.tokens[0] == 49406 and first.tokens[-1] == 49407
    (fix,) = first.fixes
    assert fix.embedding.name == "emb_v2" and fix.embedding.vectors == 3 and fix.offset == 3
    assert first.tokens[4:7] == [0, 0, 0] and first.multipliers[2] == pytest.approx(1.2)
    assert token_count == 75 + 1
    cond = host.get_learned_conditioning(["a photo of emb_v2 BREAK sky", "x"])  # no emphasis: no rescale
    assert cond.shape == (2, 154, 32)
    assert torch.equal(cond[0, 4:7], fix.embedding.vec)
    assert torch.equal(cond[1, 77:], host.cond_stage_model_empty_prompt[0])  # padded with empty chunks


def test_inpainting_keeps_the_unmasked_latent(host):
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1.0  # repaint the right half
    p = harness.FakeImg2ImgProcessing(init, image_mask=mask, prompt="a dog", steps=4, denoising_strength=0.5)
    result = harness.txt2img(p).latents
    assert torch.equal(result[..., :4], init[..., :4])
    assert not torch.equal(result[..., 4:], init[..., 4:])


@pytest.mark.parametrize("option, infotext", [("pad_cond_uncond", "Pad conds"), ("pad_cond_uncond_v0", "Pad conds v0")])
def test_padding_options_equalise_token_lengths(host, option, infotext):
    unet_rows = []
    handle = host.model.diffusion_model.register_forward_pre_hook(lambda m, args: unet_rows.append(args[0].shape[0]))
    setattr(shared.opts, option, True)
    try:
        p = harness.FakeProcessing(prompt=" ".join(["dog"] * 80), negative_prompt="blurry", steps=2)
        result = harness.txt2img(p)
    finally:
        handle.remove()
    assert unet_rows == [2, 2]  # one batched call per step, not the split path
    assert p.extra_generation_params[infotext] is True
    assert torch.isfinite(result.latents).all()


def test_ngms_skips_uncond_on_odd_steps_below_s_min_uncond(host):
    unet_rows = []
    handle = host.model.diffusion_model.register_forward_pre_hook(lambda m, args: unet_rows.append(args[0].shape[0]))
    try:
        p = harness.FakeProcessing(prompt="a dog", negative_prompt="blurry", steps=4, s_min_uncond=100.0)
        harness.txt2img(p)
    finally:
        handle.remove()
    assert unet_rows == [2, 1, 2, 1]
    assert p.extra_generation_params["NGMS"] == 100.0
