"""The A1111 adapter and script inside the simulated A1111 1.10.1 host (tests/fake_a1111)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lib_degu.settings import DeGuSettings
from tests import a1111_support
from tests.a1111_support import adapter, degu_script, rows_per_call, run, script_callbacks, shared, unet_hook_count
from tests.fake_a1111 import harness

DEFAULTS = {"enabled": True, "subject": "sks", "generic": "a"}
# The generic rows on every step: most tests check the formula and the rows step by step; the
# context reuse of the default ("context refresh every 3 steps") has tests of its own.
ON = {**DEFAULTS, "context_refresh": 1}
FULL = {**ON, "mask_source": "full"}


@pytest.fixture
def host():
    with harness.host_session(seed=0) as model:
        yield model


def _no_errors(processed):
    assert not [c for c in processed.p.comments if "error" in c.lower() or "could not" in c.lower()]


def test_disabled_is_bit_identical_to_the_host_without_the_extension(host):
    plain = run(None).latents
    assert torch.equal(run({"enabled": False, "subject": "sks"}).latents, plain)
    assert torch.equal(run({**ON, "enabled": False}).latents, plain)
    assert "DeGu" not in run({"enabled": False}).p.extra_generation_params


def test_full_mask_unit_scales_is_the_host_at_the_hosts_cost(host):
    plain = run(None).latents
    with rows_per_call(host.model.diffusion_model) as calls:
        processed = run(FULL)
    _no_errors(processed)
    # M = 1 is known before the step: the generic rows cannot change the image and do not run.
    assert torch.equal(processed.latents, plain)
    assert calls and all(rows == 2 for rows in calls)
    assert processed.p.extra_generation_params["DeGu mask used"] == "full"


@pytest.mark.parametrize(
    ("degu", "prompts", "expected"),
    [
        (None, 2, [4] * 4),
        (ON, 2, [6] * 4),
        (DEFAULTS, 2, [6, 4, 4, 6]),  # the context refreshed every 3rd step
        ({**ON, "balance": 1.0}, 2, [4] * 4),
        ({**FULL, "identity_scale": 1.5, "context_scale": 0.5, "balance": 0.5}, 2, [4] * 4),
        ({**FULL, "balance": -0.5, "context_refresh": 1}, 2, [6] * 4),
        ({**DEFAULTS, "balance": -1.0}, 2, [6] * 4),  # M = 0: the context is the whole output, never reused
        ({**DEFAULTS, "balance": -0.25}, 2, [6] * 4),  # below 0 the context is measured on every step
        ({**DEFAULTS, "balance": 0.25}, 2, [6, 4, 4, 6]),
        (ON, 1, [5] * 4),  # the image whose prompt lacks the subject adds no row
        ({**ON, "context_refresh": 2}, 2, [6, 4, 6, 4]),
        ({**ON, "context_refresh": 3, "start": 0.5}, 2, [4, 4, 6, 4]),
    ],
    ids=["off", "every-step", "defaults", "balance+1", "full-scaled", "full-balance-0.5", "balance-1", "balance-0.25",
         "balance+0.25", "one-without-subject", "refresh-2", "refresh-3-window"],
)
def test_model_rows_per_call(host, degu, prompts, expected):
    """Issue 16: never pay for a stream that cannot change the image; refresh the context every N calls."""
    batch = ["a photo of sks dog on a beach", "a photo of sks cat" if prompts == 2 else "a photo of a cat"]
    with rows_per_call(host.model.diffusion_model) as calls:
        processed = run(degu, prompt=batch, batch_size=2, steps=4)
    _no_errors(processed)
    assert calls == expected


def test_generic_rows_leave_the_hosts_own_rows_unchanged(host):
    """Inserting the generic rows must not move the host's prompt and uncond rows: the first call
    sees the same latents with and without DeGu, so its prompt and uncond outputs must agree."""
    prompts = ["a photo of sks dog on a beach", "a photo of a cat"]
    outputs = []
    handle = host.model.diffusion_model.register_forward_hook(lambda m, args, out: outputs.append(out.sample))
    try:
        run(None, prompt=prompts, batch_size=2, steps=1)
        run({**ON, "context_scale": 1.5}, prompt=prompts, batch_size=2, steps=1)
    finally:
        handle.remove()
    plain, guided = outputs
    assert (plain.shape[0], guided.shape[0]) == (4, 5)
    assert torch.allclose(guided[[0, 1, 3, 4]], plain, atol=1e-5)  # prompt rows, (generic row), uncond rows


def test_generic_rows_run_in_the_same_model_call(host):
    with rows_per_call(host.model.diffusion_model) as calls:
        run(ON, batch_size=2)
    assert calls and all(rows == 6 for rows in calls)  # 2 prompt + 2 generic + 2 uncond rows, one call


@pytest.mark.parametrize("source", ["attention", "difference"])
def test_degu_changes_the_image_and_says_which_mask_ran(host, source):
    plain = run(None).latents
    processed = run({**ON, "mask_source": source, "context_scale": 1.5})
    _no_errors(processed)
    assert not torch.allclose(processed.latents, plain, atol=1e-3)
    assert processed.p.extra_generation_params["DeGu mask used"] == source
    assert processed.p.extra_generation_params["DeGu subject"] == "sks"


def test_balance_minus_one_equals_plain_cfg_on_the_generic_prompt(host):
    generic_plain = run(None, prompt="a photo of a dog on a beach").latents
    processed = run({**ON, "balance": -1.0, "mask_source": "difference"})
    assert torch.allclose(processed.latents, generic_plain, atol=1e-4)


def test_batch_of_two_prompts_one_without_subject(host):
    prompts = ["a photo of sks dog", "a photo of a cat"]
    plain = run(None, prompt=prompts, batch_size=2).latents
    processed = run({**ON, "context_scale": 2.0}, prompt=prompts, batch_size=2)
    assert not torch.allclose(processed.latents[0], plain[0], atol=1e-3)
    assert torch.allclose(processed.latents[1], plain[1], atol=1e-4)
    assert any("image(s) 2" in c for c in processed.p.comments)


def test_and_prompt(host):
    prompt = "a photo of sks dog AND a sunny beach:0.6"
    plain = run(None, prompt=prompt).latents
    assert torch.allclose(run({**FULL}, prompt=prompt).latents, plain, atol=1e-4)
    processed = run({**ON, "context_scale": 2.0, "mask_source": "difference"}, prompt=prompt)
    _no_errors(processed)
    assert not torch.allclose(processed.latents, plain, atol=1e-3)


def test_skip_uncond_path(host):
    shared.opts.skip_early_cond = 0.5
    plain = run(None).latents
    assert torch.allclose(run(FULL).latents, plain, atol=1e-4)
    processed = run({**ON, "context_scale": 2.0})
    _no_errors(processed)
    assert torch.isfinite(processed.latents).all()


def test_batch_cond_uncond_off_matches_on(host):
    settings = {**ON, "context_scale": 1.5}
    batched = run(settings).latents
    shared.opts.batch_cond_uncond = False
    split = run(settings)
    _no_errors(split)
    assert torch.allclose(split.latents, batched, atol=1e-4)


def test_hires_second_pass_at_another_latent_size(host):
    plain = run(None, enable_hr=True, hr_scale=2.0).latents
    processed = run({**ON, "context_scale": 1.5}, enable_hr=True, hr_scale=2.0)
    _no_errors(processed)
    assert processed.latents.shape == plain.shape == (1, 4, 16, 16)
    assert not torch.allclose(processed.latents, plain, atol=1e-3)
    assert torch.allclose(run(FULL, enable_hr=True, hr_scale=2.0).latents, plain, atol=1e-4)


def test_window_outside_changes_nothing_inside_changes(host):
    plain = run(None, steps=4).latents
    # A window that no step falls into: bit-identical (no rows added at all).
    assert torch.equal(run({**ON, "start": 0.99, "end": 1.0, "context_scale": 2.0}, steps=4).latents, plain)
    assert not torch.equal(run({**ON, "start": 0.0, "end": 0.5, "context_scale": 2.0}, steps=4).latents, plain)


def test_subject_missing_steps_aside_with_a_message(host):
    plain = run(None, prompt="a photo of a cat").latents
    processed = run(ON, prompt="a photo of a cat")
    assert torch.equal(processed.latents, plain)
    assert any("not found in the prompt" in c for c in processed.p.comments)


def test_bad_settings_step_aside_with_a_message(host):
    plain = run(None).latents
    processed = run({"enabled": True, "subject": ""})
    assert torch.equal(processed.latents, plain)
    assert any("no subject" in c for c in processed.p.comments)


def test_hooks_and_patches_gone_after_exception_mid_sampling(host):
    unet = host.model.diffusion_model
    before = unet_hook_count(unet)
    calls = []

    def explode(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom mid-sampling")

    handle = unet.register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"), a1111_support.created_samplers() as samplers:
            p = harness.FakeProcessing(
                prompt="sks dog", steps=4, scripts=[degu_script.DeGuScript()], script_args=_args(ON)
            )
            p.scripts.scripts[0].args_from, p.scripts.scripts[0].args_to = 0, 14
            harness.txt2img(p)
    finally:
        handle.remove()
    assert unet_hook_count(unet) == before
    # The pass's own sampler, kept from before closing(p) dropped p.sampler: every patch is gone.
    assert len(samplers) == 1 and calls == [1, 1]
    a1111_support.assert_sampler_clean(samplers[0])
    # The next generation with DeGu off is bit-identical to one without the extension.
    assert torch.equal(run({"enabled": False}).latents, run(None).latents)


def _args(settings):
    from tests.a1111_support import script_args

    return script_args(**settings)


def test_no_hooks_or_extra_callbacks_left_after_generations(host):
    unet = host.model.diffusion_model
    before = unet_hook_count(unet)
    with a1111_support.created_samplers() as samplers:
        run(ON)
        run({**ON, "mask_source": "difference"}, enable_hr=True)
        interrupt = lambda params: shared.state.interrupt() if params.denoiser.step == 1 else None  # noqa: E731
        script_callbacks.on_cfg_denoiser(interrupt, name="interrupt")
        try:
            run({**ON, "context_scale": 2.0})  # interrupted: the host stops sampling early
            assert shared.state.interrupted
        finally:
            script_callbacks.remove_callbacks_for_function(interrupt)
            shared.state.interrupted = False
    assert len(samplers) == 4  # first pass, first pass + hires pass, interrupted pass
    for sampler in samplers:
        a1111_support.assert_sampler_clean(sampler)
    assert unet_hook_count(unet) == before
    ours = [c for c in script_callbacks.callback_map["callbacks_cfg_denoiser"] if c.callback is adapter.on_cfg_denoiser]
    assert len(ours) == 1
    adapter.register_callbacks()  # "Reload UI" registers again: still one
    ours = [c for c in script_callbacks.callback_map["callbacks_cfg_denoiser"] if c.callback is adapter.on_cfg_denoiser]
    assert len(ours) == 1


def test_textual_inversion_subject_covers_every_vector(host):
    harness.register_embedding("my-dog", 3)
    tokenize_line = host.cond_stage_model.tokenize_line
    from lib_degu.hosts.common import subject_positions

    positions = subject_positions(tokenize_line, "a photo of my-dog on grass", "a photo of a dog on grass", "my-dog")
    chunks, _ = tokenize_line("a photo of my-dog on grass")
    fix = chunks[0].fixes[0]
    assert set(range(fix.offset + 1, fix.offset + 4)) <= set(positions)
    processed = run({"enabled": True, "subject": "my-dog", "generic": "a dog"}, prompt="a photo of my-dog on grass")
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"


def test_xyz_override_on_p_wins_over_ui_args(host):
    p = harness.FakeProcessing(prompt="sks dog", steps=2)
    p.degu_balance = -1.0
    settings = degu_script.DeGuScript()._settings(p, tuple(_args(ON)))
    assert settings.balance == -1.0 and settings.subject == "sks"


def test_show_mask_appends_one_preview_per_guided_image(host):
    from PIL import Image

    from lib_degu.hosts.common import Generation
    from lib_degu.settings import DeGuSettings
    from lib_degu.step import Guide

    # A real run records the guide of each batch iteration's last pass.
    processed = run({**ON, "show_mask": True}, prompt=["a cat", "sks dog"], batch_size=2)
    assert processed.latents.shape[0] == 2

    class Processed:  # the fake host's images are latents: stand-in PIL images for the gallery
        images = [Image.new("RGB", (64, 64), (90, 90, 90)) for _ in range(2)]
        infotexts = ["one", "two"]
        index_of_first_image = 0

    generation = Generation(DeGuSettings(**ON, show_mask=True))
    guide = Guide(generation.settings)
    zeros = torch.zeros(1, 4, 8, 8)
    hot = torch.full((1, 4, 4), 0.1)
    hot[0, 0, :2] = 0.9  # a map that varies: mean 0.2, max 0.9
    guide(zeros, zeros, zeros, cfg_scale=5.0, attention=hot)
    guide(zeros, zeros, zeros, cfg_scale=5.0, attention=torch.full((1, 4, 4), 0.3))
    guide.last_mask = torch.ones(1, 1, 8, 8)
    p = harness.FakeProcessing(prompt="x", batch_size=2)
    generation.remember(p, [1], guide)  # only image 2 was guided
    target = Processed()
    degu_script.add_mask_previews(p, target, generation)
    # The caption: the subject's share of attention, the mean over pixels and steps ((0.2 + 0.3) / 2).
    assert len(target.images) == 3 and target.infotexts[2].startswith("DeGu mask, subject attention 25.0%\ntwo")
    assert target.images[2].getpixel((40, 40))[0] > 150  # mask 1: red


def test_controlnet_marker_row_is_carried_onto_the_generic_rows(host):
    """ControlNet prepends one marker token row to every prompt cond; DeGu's rows must match it."""

    def mark(params):
        if params.text_cond.shape[1] % 77 == 0:
            marker = torch.full_like(params.text_cond[:, :1], 0.5)
            params.text_cond = torch.cat([marker, params.text_cond], dim=1)
            params.text_uncond = torch.cat([torch.full_like(params.text_uncond[:, :1], -0.5), params.text_uncond], 1)

    # ControlNet's marking happens before DeGu sees the rows.
    script_callbacks.remove_callbacks_for_function(adapter.on_cfg_denoiser)
    script_callbacks.on_cfg_denoiser(mark, name="marker")
    adapter.register_callbacks()
    try:
        plain = run(None).latents
        processed = run(FULL)
        _no_errors(processed)
        assert torch.allclose(processed.latents, plain, atol=1e-4)
        assert not torch.allclose(run({**ON, "context_scale": 2.0}).latents, plain, atol=1e-3)
    finally:
        script_callbacks.remove_callbacks_for_function(mark)


def test_cond_scale_multiplier_of_cfgpp_samplers_is_respected(host):
    from modules import scripts

    class Multiplier(scripts.Script):
        def title(self):
            return "multiplier"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            p.sampler.model_wrap_cfg.cond_scale_miltiplier = 0.4

    def generate(settings):
        multiplier = Multiplier()
        scripts_ = [multiplier]
        args = []
        if settings is not None:
            script = degu_script.DeGuScript()
            script.args_from, script.args_to = 0, 14
            scripts_.append(script)
            args = _args(settings)
        multiplier.args_from = multiplier.args_to = len(args)
        p = harness.FakeProcessing(prompt="a photo of sks dog", steps=3, scripts=scripts_, script_args=args)
        return harness.txt2img(p).latents

    plain = generate(None)
    assert torch.allclose(generate(FULL), plain, atol=1e-4)
    assert not torch.allclose(generate({**ON, "context_scale": 2.0}), plain, atol=1e-3)


SAMPLERS = ["Euler", "LCM", "DDIM", "DDIM CFG++", "PLMS"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_family_full_mask_equals_host_and_balance_gives_the_generic_prompt(host, sampler):
    """k-diffusion (denoised x0) and CompVis timestep samplers (eps, timesteps as sigma, CFG++'s
    multiplier and last_noise_uncond, PLMS's extra first-step call) all go through CFGDenoiser.forward."""
    plain = run(None, sampler_name=sampler).latents
    full = run(FULL, sampler_name=sampler)
    _no_errors(full)
    assert torch.allclose(full.latents, plain, atol=1e-4)
    generic_plain = run(None, sampler_name=sampler, prompt="a photo of a dog on a beach").latents
    generic = run({**ON, "balance": -1.0, "mask_source": "difference"}, sampler_name=sampler).latents
    assert torch.allclose(generic, generic_plain, atol=1e-4)
    guided = run({**ON, "context_scale": 1.5, "mask_source": "difference"}, sampler_name=sampler)
    _no_errors(guided)
    assert not torch.allclose(guided.latents, plain, atol=1e-3)
    # Random weights attend almost uniformly (mask near 1): the attention mask moves the image less.
    attention = run({**ON, "context_scale": 1.5}, sampler_name=sampler)
    _no_errors(attention)
    assert not torch.equal(attention.latents, plain)
    assert attention.p.extra_generation_params["DeGu mask used"] == "attention"


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS"])
def test_timestep_samplers_hires_and_inpaint(host, sampler):
    plain = run(None, sampler_name=sampler, enable_hr=True, hr_scale=2.0).latents
    assert torch.allclose(run(FULL, sampler_name=sampler, enable_hr=True, hr_scale=2.0).latents, plain, atol=1e-4)
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0

    def inpaint(degu):
        p = harness.FakeImg2ImgProcessing(
            init_latent=init, image_mask=mask, prompt="a photo of sks dog", steps=4, sampler_name=sampler,
            denoising_strength=0.75, **({} if degu is None else {"scripts": [a1111_support.make_script()],
                                         "script_args": a1111_support.script_args(**degu)}),
        )
        return harness.txt2img(p).latents

    plain = inpaint(None)
    assert torch.allclose(inpaint(FULL), plain, atol=1e-4)
    guided = inpaint({**ON, "context_scale": 2.0, "mask_source": "difference"})
    assert not torch.allclose(guided, plain, atol=1e-3)
    keep = mask.expand_as(plain) == 0  # outside the inpaint mask the host blends the original back
    assert torch.allclose(guided[keep], plain[keep], atol=1e-4)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
@pytest.mark.parametrize("checkpoints_limit", [1, 2], ids=["weights-into-the-same-model", "new-model-object"])
def test_refiner_switch_steps_aside_after_the_switch_with_a_message(host, sampler, checkpoints_limit):
    """sd_samplers_common.apply_refiner loads the refiner mid-sampling and recomputes the host's conds.
    With the default sd_checkpoints_limit of 1 the refiner's weights go into the same model object
    (found on the real A1111), with a larger limit a new object replaces it. Either way DeGu guides
    the steps before the switch and leaves the refiner's steps to the host."""
    from tests.tiny_models import tiny_unet

    base_weights = {k: v.clone() for k, v in host.state_dict().items()}
    base_info, base_empty = host.sd_checkpoint_info, host.cond_stage_model_empty_prompt
    shared.opts.sd_checkpoints_limit = checkpoints_limit

    def generate(degu, switch_at):
        def load_refiner():
            return harness.FakeSdModel(tiny_unet(7).requires_grad_(False), harness.FakeClipEmbedder(7), "refiner")

        refiner = harness.FakeCheckpointInfo("refiner", loader=load_refiner)
        try:
            return run(degu, sampler_name=sampler, refiner_checkpoint_info=refiner, refiner_switch_at=switch_at)
        finally:  # the real host reloads the base checkpoint at the next generation
            shared.sd_model = host
            host.load_state_dict(base_weights)
            host.sd_checkpoint_info, host.cond_stage_model_empty_prompt = base_info, base_empty

    plain = generate(None, 0.5)
    assert plain.p.extra_generation_params["Refiner"] == "refiner"
    assert not torch.equal(plain.latents, run(None, sampler_name=sampler).latents)  # the refiner did act
    assert torch.allclose(generate(FULL, 0.5).latents, plain.latents, atol=1e-4)
    guided = generate({**ON, "context_scale": 2.0, "mask_source": "difference"}, 0.5)
    assert not torch.allclose(guided.latents, plain.latents, atol=1e-3)
    assert any("refiner" in comment and "DeGu is off after the switch" in comment for comment in guided.p.comments)
    assert not [c for c in guided.p.comments if "error" in c.lower()]
    # The layout pass does not run with a refiner (the switch happens inside the first pass): one pass.
    layout = generate({**ON, "context_scale": 2.0, "layout_pass": True}, 0.5)
    assert torch.equal(layout.latents, generate({**ON, "context_scale": 2.0}, 0.5).latents)
    assert any("layout pass does not run with a refiner" in comment for comment in layout.p.comments)
    # Switching before the first step: DeGu never guides, the result is the host's, bit for bit.
    immediate = generate({**ON, "context_scale": 2.0}, 0.0)
    assert torch.equal(immediate.latents, generate(None, 0.0).latents)
    assert unet_hook_count(host) == 0


LONG = "sks cat on a mat, " + "a very long description of a sunny seaside town, " * 9  # > 75 tokens: 2 chunks


def _assert_host_identities() -> torch.Tensor:
    """On the installed model: DeGu off is bit-identical, mask 1 with scales 1 equals the host, and
    balance -1 equals plain CFG on the generic prompt at the first pass and at the hires size."""
    plain = run(None).latents
    assert torch.equal(run({**ON, "enabled": False}).latents, plain)
    assert torch.allclose(run(FULL).latents, plain, atol=1e-4)
    for hires in (False, True):
        generic_plain = run(None, prompt="a photo of a dog on a beach", enable_hr=hires).latents
        generic = run({**ON, "balance": -1.0, "mask_source": "difference"}, enable_hr=hires)
        _no_errors(generic)
        assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
    return plain


@pytest.fixture
def sdxl_host():
    with harness.host_session(seed=0, arch="sdxl") as model:
        yield model


def test_sdxl_dict_conds_full_mask_equals_host_and_balance_gives_the_generic_prompt(sdxl_host):
    """SDXL's conds are dicts (crossattn from two encoders + vector with the image size): the generic
    rows carry both keys, made at the pass's size (hires too), in the same model call."""
    plain = _assert_host_identities()
    calls: list[tuple[int, int]] = []
    handle = sdxl_host.model.diffusion_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0].shape[0], kwargs["class_labels"].shape[0])),
        with_kwargs=True,
    )
    try:
        guided = run({**ON, "context_scale": 2.0})
    finally:
        handle.remove()
    _no_errors(guided)
    assert calls and all(rows == (3, 3) for rows in calls)  # prompt, generic, uncond: x and vector rows
    assert guided.p.extra_generation_params["DeGu mask used"] == "attention"
    assert not torch.equal(guided.latents, plain)


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd3"])
@pytest.mark.parametrize("second", [LONG, LONG.replace("sks ", "")], ids=["both-guided", "long-unguided"])
def test_batch_prompts_of_different_chunk_counts(arch, second):
    """77 and 154 tokens (SD3: CLIP + T5 halves) in one batch: the host pads shorter prompt rows
    (stack_conds), DeGu pads its generic rows the same way, also when only the short prompt is guided."""
    prompts = ["a photo of sks dog", second]
    generic_prompts = ["a photo of a dog", second.replace("sks", "a", 1)]
    with harness.host_session(seed=0, arch=arch):
        generic_plain = run(None, prompt=generic_prompts, batch_size=2).latents
        generic = run({**ON, "balance": -1.0, "mask_source": "difference"}, prompt=prompts, batch_size=2)
        assert not [c for c in generic.p.comments if "error" in c.lower()]
        assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
        guided = run({**ON, "context_scale": 2.0}, prompt=prompts, batch_size=2)
        assert not [c for c in guided.p.comments if "error" in c.lower()]
        assert not torch.equal(guided.latents[0], run(None, prompt=prompts, batch_size=2).latents[0])


def test_generic_longer_than_the_prompt_is_cut_with_a_message(host):
    prompt = "a photo of " + "very " * 68 + "sks"  # 72 tokens: one chunk
    plain = run(None, prompt=prompt).latents
    processed = run({**ON, "generic": "small brown dog with floppy ears", "context_scale": 2.0}, prompt=prompt)
    assert any("longer than the prompt" in c and "end was cut" in c for c in processed.p.comments)
    assert not [c for c in processed.p.comments if "error" in c.lower()]
    assert torch.isfinite(processed.latents).all() and not torch.equal(processed.latents, plain)


def test_sd3_clip_and_t5_layout_with_the_attention_mask():
    """SD3 (MM-DiT: no cross-attention modules): dict conds whose crossattn holds the CLIP chunks then
    as many T5 tokens; the attention mask is read from the joint attention (tests/test_mmdit_hosts.py)."""
    with harness.host_session(seed=0, arch="sd3") as model:
        plain = _assert_host_identities()
        assert plain.shape == (1, 16, 8, 8)
        calls: list[int] = []
        handle = model.model.diffusion_model.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append(kwargs["context"].shape[0]), with_kwargs=True
        )
        try:
            guided = run({**ON, "context_scale": 2.0})
        finally:
            handle.remove()
        assert calls and all(rows == 3 for rows in calls)
        assert guided.p.extra_generation_params["DeGu mask used"] == "attention"
        assert not any("attention mask unavailable" in c for c in guided.p.comments)
        assert not torch.allclose(guided.latents, plain, atol=1e-3)


@pytest.mark.parametrize("padding", ["none", "pad_cond_uncond", "pad_cond_uncond_v0"])
def test_prompt_and_negative_of_different_lengths_under_each_padding_option(host, padding):
    """A 154-token negative prompt with a 77-token prompt: the host pads (two options) or runs the
    prompt and uncond rows in separate calls; the generic rows go wherever the prompt rows go."""
    if padding != "none":
        setattr(shared.opts, padding, True)
    negative = "blurry, " + "ugly, low quality, bad anatomy, watermark, " * 12
    plain = run(None, negative_prompt=negative).latents
    assert torch.allclose(run(FULL, negative_prompt=negative).latents, plain, atol=1e-4)
    generic_plain = run(None, prompt="a photo of a dog on a beach", negative_prompt=negative).latents
    generic = run({**ON, "balance": -1.0, "mask_source": "difference"}, negative_prompt=negative)
    _no_errors(generic)
    assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
    guided = run({**ON, "context_scale": 2.0}, negative_prompt=negative)
    _no_errors(guided)
    assert not torch.equal(guided.latents, plain)


def test_instructpix2pix_edit_model_steps_aside_with_a_message(host):
    plain = run(None).latents
    host.cond_stage_key = "edit"
    try:
        processed = run({**ON, "context_scale": 2.0})
    finally:
        host.cond_stage_key = "crossattn"
    assert torch.equal(processed.latents, plain)
    assert any("InstructPix2Pix" in c and "off" in c for c in processed.p.comments)


def test_the_mask_that_ran_is_in_the_image_infotext(host):
    """postprocess_batch runs before the host writes the infotexts: "DeGu mask used" reaches the PNG."""
    processed = run({**ON, "context_scale": 1.5})
    assert "DeGu mask used: attention" in processed.infotexts[0]
    assert "DeGu subject: sks" in processed.infotexts[0]
    assert "DeGu mask used" not in run({**ON}, prompt="a photo of a cat").infotexts[0]  # stepped aside


@pytest.mark.parametrize("sampler", ["Euler", "PLMS"])
def test_prompt_editing_switches_the_generic_rows_at_the_hosts_step(host, sampler):
    """The generic rows follow the prompt's schedule: balance -1 with "[sks dog:sks cat:1]" equals
    plain CFG on "[a dog:a cat:1]", step for step (PLMS adds a call, so steps and calls differ)."""
    prompt, generic_prompt = "a photo of [sks dog:sks cat:1] on a beach", "a photo of [a dog:a cat:1] on a beach"
    generic_plain = run(None, prompt=generic_prompt, sampler_name=sampler).latents
    generic = run({**ON, "balance": -1.0, "mask_source": "difference"}, prompt=prompt, sampler_name=sampler)
    _no_errors(generic)
    assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
    unswitched = run(None, prompt="a photo of a dog on a beach", sampler_name=sampler).latents
    assert not torch.allclose(generic.latents, unswitched, atol=1e-3)  # the switch did happen


@pytest.mark.parametrize("skip", ["Skip Early CFG", "NGMS"])
def test_skipped_uncond_steps_use_the_exact_no_uncond_formula(host, skip):
    """Skip Early CFG and NGMS make the host fake its uncond rows with the prompt rows and combine at
    scale 1: DeGu must then give g + a_id * M * (s - g), and on the other steps the full formula, checked
    step by step from the model's own rows at non-unit scales with a mask between 0 and 1."""
    a_id, a_ctx, w = 0.6, 1.7, 7.0
    kwargs = {"s_min_uncond": 100.0} if skip == "NGMS" else {}  # NGMS: every odd step (all sigmas < 100)
    if skip == "Skip Early CFG":
        shared.opts.skip_early_cond = 0.5  # steps 0, 1 and 2 of 4
    steps: list[dict] = []

    def before(params):  # on_cfg_denoiser: the step, whether the host will skip uncond, DeGu's guide
        denoiser = params.denoiser
        state = getattr(denoiser, adapter.PASS_ATTR)
        skipped = (skip == "Skip Early CFG" and denoiser.step / denoiser.total_steps <= 0.5) or (
            skip == "NGMS" and denoiser.step % 2 == 1
        )
        steps.append({"skipped": skipped, "guide": state.guide})

    def denoised(params):  # on_cfg_denoised: every row the model computed (prompt, generic, uncond)
        steps[-1]["x_out"] = params.x.clone()

    def after(params):  # on_cfg_after_cfg: the combined result, DeGu's difference included
        steps[-1]["out"] = params.x.clone()
        steps[-1]["mask"] = steps[-1]["guide"].last_mask.clone()

    adapter.register_callbacks()  # DeGu's callback first: the rows are in place when ours run
    script_callbacks.on_cfg_denoiser(before, name="test")
    script_callbacks.on_cfg_denoised(denoised, name="test")
    script_callbacks.on_cfg_after_cfg(after, name="test")
    try:
        settings = {**ON, "mask_source": "difference", "identity_scale": a_id, "context_scale": a_ctx}
        processed = run(settings, prompt=["a photo of sks dog on a beach", "sks cat in snow"], batch_size=2, **kwargs)
    finally:
        for callback in (before, denoised, after):
            script_callbacks.remove_callbacks_for_function(callback)
    _no_errors(processed)
    assert processed.p.extra_generation_params[skip]
    assert {step["skipped"] for step in steps} == {True, False}
    for step in steps:
        x_out, m = step["x_out"], step["mask"]
        s, g = x_out[0:2], x_out[2:4]  # 2 prompt rows, 2 generic rows, then 2 uncond (or fake uncond) rows
        assert ((m > 0.05) & (m < 0.95)).any() and float(m.max() - m.min()) > 0.2  # a mask between 0 and 1
        if step["skipped"]:
            assert torch.equal(x_out[4:6], s)  # the host's fake uncond
            expected = g + a_id * m * (s - g)
        else:
            u = x_out[4:6]
            expected = u + w * (a_id * m * (s - u) + a_ctx * (1 - m) * (g - u))
        assert torch.allclose(step["out"], expected, atol=1e-5, rtol=1e-5)


def test_attention_is_read_from_each_images_prompt_row_not_its_generic_row(host, monkeypatch):
    """With sharpened cross-attention the prompt and generic rows attend differently: the map DeGu
    guides with is, per image, the explicit softmax of that image's prompt row (one Euler step)."""
    from lib_degu.step import Guide
    from tests.attention_reference import explicit_map, recorded_cross_attention, sharpen_cross_attention

    unet = host.model.diffusion_model
    sharpen_cross_attention(unet)
    maps: list = []
    delta = Guide.delta
    monkeypatch.setattr(Guide, "delta", lambda self, *a, **k: maps.append(k["attention"]) or delta(self, *a, **k))
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    generic_prompts = ["a photo of a dog on a beach", "a cat in snow"]
    positions = [[4], [1]]  # after BOS: one token per word in the simulated tokenizer
    with recorded_cross_attention(unet) as calls:
        processed = run({**ON, "context_scale": 1.5}, prompt=prompts, batch_size=2, steps=1)
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
    assert len(maps) == 1 and maps[0].shape == (2, 8, 8)
    context = calls[0][2]

    def row_of(text):
        cond = host.get_learned_conditioning([text])[0]
        (row,) = [r for r in range(context.shape[0]) if torch.equal(context[r], cond)]
        return row

    for image in range(2):
        prompt_map = explicit_map(calls, row_of(prompts[image]), positions[image], (8, 8))
        generic_map = explicit_map(calls, row_of(generic_prompts[image]), positions[image], (8, 8))
        assert float((prompt_map - generic_map).abs().max()) > 1e-2  # the rows do attend differently
        assert torch.allclose(maps[0][image].double(), prompt_map, atol=1e-5)


def _inpainting_rows(model):
    """Records every UNet call's input (9 channels: latent, mask, masked-image latent) and context."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, args, kwargs):
        calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone()))

    return calls, model.model.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img inpaint"])
def test_inpainting_model_generic_rows_carry_their_images_conditioning(arch, mode):
    """A 9-channel inpainting model gets latent + mask + masked-image latent per row (c_concat): each
    generic row must carry its own image's rows (in img2img the images' masked latents differ), so
    mask 1 equals the host, balance -1 equals plain CFG on the generic prompt, and in every UNet call
    a generic row's extra channels are those of its image's prompt row."""
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    generic_prompts = ["a photo of a dog on a beach", "a cat in snow"]
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:7, 1:6] = 1.0

    with harness.host_session(seed=0, arch=arch, inpainting=True) as model:

        def generate(degu, prompt=prompts):
            kwargs = {"prompt": prompt, "batch_size": 2, "steps": 3}
            if degu is not None:
                kwargs.update(scripts=[a1111_support.make_script()], script_args=a1111_support.script_args(**degu))
            if mode == "txt2img":
                p = harness.FakeProcessing(**kwargs)
            else:
                p = harness.FakeImg2ImgProcessing(init_latent=init, image_mask=mask, denoising_strength=0.8, **kwargs)
            processed = harness.txt2img(p)
            processed.p = p
            return processed

        plain = generate(None)
        assert torch.allclose(generate(FULL).latents, plain.latents, atol=1e-4)
        generic_plain = generate(None, prompt=generic_prompts).latents
        generic = generate({**ON, "balance": -1.0, "mask_source": "difference"})
        _no_errors(generic)
        assert torch.allclose(generic.latents, generic_plain, atol=1e-4)
        calls, handle = _inpainting_rows(model)
        try:
            guided = generate({**ON, "context_scale": 2.0})
        finally:
            handle.remove()
        _no_errors(guided)
        assert not torch.allclose(guided.latents, plain.latents, atol=1e-3)
        conds = [model.get_learned_conditioning(list(texts)) for texts in (prompts, generic_prompts)]
        if isinstance(conds[0], dict):
            conds = [c["crossattn"] for c in conds]
        assert calls and all(x.shape[:2] == (6, 9) for x, _ in calls)  # 2 prompt, 2 generic, 2 uncond rows
        for x, context in calls:
            for image in range(2):
                (prompt_row,) = [r for r in range(6) if torch.equal(context[r], conds[0][image])]
                (generic_row,) = [r for r in range(6) if torch.equal(context[r], conds[1][image])]
                assert torch.equal(x[generic_row, 4:], x[prompt_row, 4:])
            if mode != "txt2img":  # the images' masked latents differ: a row from the wrong image would show
                assert not torch.equal(x[0, 5:], x[1, 5:])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # Hires fix: the second pass starts at a new latent size with its own measured context.
        ({"enable_hr": True, "hr_scale": 2.0}, [3, 2, 2, 3, 3, 2, 2, 3]),
        # Prompt editing: the generic rows switch after step 1, so step 2 measures them again.
        ({"prompt": "a photo of [sks dog:sks cat:1] on a beach", "steps": 6}, [3, 2, 3, 2, 2, 3]),
        # PLMS calls the model twice on its first step (one call more than DDIM's three): calls,
        # not steps, are counted.
        ({"sampler_name": "PLMS"}, [3, 2, 2, 3]),
        ({"sampler_name": "DDIM"}, [3, 2, 2]),
    ],
    ids=["hires", "prompt-editing", "plms", "ddim"],
)
def test_context_reuse_refreshes_where_the_context_changes(host, kwargs, expected):
    plain = run(None, **kwargs).latents
    with rows_per_call(host.model.diffusion_model) as calls:
        processed = run({**DEFAULTS, "context_scale": 1.5}, **kwargs)
    _no_errors(processed)
    assert calls == expected
    assert torch.isfinite(processed.latents).all()
    assert not torch.allclose(processed.latents, plain, atol=1e-3)
    every_step = run({**ON, "context_scale": 1.5}, **kwargs).latents
    assert not torch.equal(processed.latents, every_step)  # the reused steps really reused


def test_old_infotext_without_context_refresh_pastes_every_step(host):
    """Images made before the setting existed ran the generic rows on every step."""
    from lib_degu.settings import DeGuSettings

    old = {"DeGu": "True", "DeGu subject": "sks", "DeGu generic": "a"}
    assert DeGuSettings.from_infotext(old).context_refresh == 1
    assert DeGuSettings.from_infotext({**old, "DeGu context refresh": "3"}).context_refresh == 3


LAYOUT = {**ON, "layout_pass": True, "context_scale": 1.5}


def test_the_layout_pass_samples_again_from_the_same_noise(host):
    """An ancestral sampler draws every step's noise from ``p.rng``: with the mask 1 everywhere
    (balance +1) the second pass is the host's own image bit for bit, so it replayed the first
    pass's initial and per-step noise; it ran twice, the first pass's latent untouched."""
    plain = run(None, sampler_name="LCM").latents
    with rows_per_call(host.model.diffusion_model) as calls:
        processed = run({**LAYOUT, "balance": 1.0}, sampler_name="LCM")
    _no_errors(processed)
    assert len(calls) == 2 * 4
    assert torch.equal(processed.latents, plain)
    assert processed.p.extra_generation_params["DeGu layout pass"] == "True"


def test_the_second_pass_guides_with_the_first_passs_layout_and_every_patch_is_undone(host, monkeypatch):
    from lib_degu import step

    layouts, used = [], []
    layout_mask, make_mask = step.Guide.layout_mask, step.Guide.make_mask

    def recording_layout(self):
        layouts.append(layout_mask(self))
        return layouts[-1]

    def recording_make_mask(self, s, g, attention):
        used.append(make_mask(self, s, g, attention))
        return used[-1]

    monkeypatch.setattr(step.Guide, "layout_mask", recording_layout)
    monkeypatch.setattr(step.Guide, "make_mask", recording_make_mask)
    plain = run(None).latents
    with a1111_support.created_samplers() as samplers:
        processed = run(LAYOUT)
    _no_errors(processed)
    assert len(layouts) == 1 and set(layouts[0].unique().tolist()) <= {0.0, 1.0}
    assert [source for _, source in used] == ["attention"] * 4 + ["layout"] * 4
    assert all(torch.equal(mask, layouts[0]) for mask, _ in used[4:])  # 8x8 latents: no resize
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention, layout"
    assert not torch.equal(processed.latents, plain)
    a1111_support.assert_sampler_clean(samplers[0])
    assert samplers[0].func.__name__ == "sample_euler"  # the host's own, not the first pass's copying wrapper


def test_the_progress_text_says_which_layout_pass_runs_and_is_restored(host):
    """The host's progress bar restarts with the second loop; its text names the pass."""
    with rows_per_call(host.model.diffusion_model, record=lambda sample: shared.state.textinfo) as shown:
        _no_errors(run(LAYOUT))
    assert shown == ["DeGu layout pass 1/2"] * 4 + ["DeGu layout pass 2/2"] * 4
    assert shared.state.textinfo is None


def test_the_console_total_progress_bar_counts_both_layout_passes(host):
    """The host sizes "Total progress" for one loop per batch; the layout pass adds its second loop,
    so the bar ends full, not past its end (2 batches x 2 passes x 4 steps)."""
    for settings, loops in ((None, 2), (LAYOUT, 4)):
        shared.total_tqdm.clear()
        _no_errors(run(settings, n_iter=2))
        bar = shared.total_tqdm._tqdm
        assert (bar.n, bar.total) == (loops * 4, loops * 4)
    shared.total_tqdm.clear()


def test_a_hires_pass_reuses_the_layout_instead_of_sampling_twice(host):
    with rows_per_call(host.model.diffusion_model) as calls:
        processed = run(LAYOUT, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3)
    _no_errors(processed)
    assert len(calls) == 2 * 4 + 3
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention, layout"


def test_an_interrupt_in_the_first_pass_keeps_it_and_samples_no_second(host, monkeypatch):
    from lib_degu.hosts import common

    calls, restored = [], []
    monkeypatch.setattr(common.NoiseState, "restore", lambda self: restored.append(1))

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == 2:
            shared.state.interrupted = True

    handle = host.model.diffusion_model.register_forward_pre_hook(interrupt)
    try:
        run(LAYOUT)
    finally:
        handle.remove()
        shared.state.interrupted = False
    assert len(calls) == 2 and not restored


def test_the_layout_pass_without_the_attention_mask_samples_once_and_says_why(host):
    with rows_per_call(host.model.diffusion_model) as calls:
        processed = run({**LAYOUT, "mask_source": "difference"})
    assert len(calls) == 4
    assert any("layout pass needs the attention mask" in c for c in processed.p.comments)


def test_the_second_pass_counts_its_steps_from_zero(host, monkeypatch):
    """DeGu's window is read from the host's step counter: the second pass's steps are 0..3 again."""
    from lib_degu import step

    sources = []
    make_mask = step.Guide.make_mask

    def recording(self, s, g, attention):
        result = make_mask(self, s, g, attention)
        sources.append(result[1])
        return result

    monkeypatch.setattr(step.Guide, "make_mask", recording)
    run({**LAYOUT, "end": 0.5})
    assert sources == ["attention"] * 2 + ["layout"] * 2


def test_a_sampler_that_updates_its_start_latent_in_place_cannot_change_the_second_pass(host):
    import sys

    kdiffusion = sys.modules["modules.sd_samplers_kdiffusion"]
    euler = kdiffusion.sample_euler

    def in_place(model, x, *args, **kwargs):
        out = euler(model, x, *args, **kwargs)
        x.zero_()
        return out

    plain = run(None).latents
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kdiffusion, "sample_euler", in_place)
        processed = run({**LAYOUT, "balance": 1.0})
    assert torch.equal(processed.latents, plain)


@pytest.mark.parametrize("subject, generic", [
    ("sks", ""),  # "empty removes the subject word": the host's parser cannot read an empty value
    ("sks dog", "a dog, on a beach"),
    ("sks", "dog: a"),
    ("sks", " "),
])
def test_the_infotext_pastes_back_every_setting_without_a_parse_error(host, capsys, subject, generic):
    """The PNG text is read by the host's own parser: no "Error parsing", and the settings that come
    back are the ones the image was made with."""
    settings = DeGuSettings(**{**ON, "subject": subject, "generic": generic, "layout_pass": True})
    processed = run(dataclasses.asdict(settings), prompt=f"a photo of {subject} on a beach")
    params = harness.parse_infotext_params(processed.infotexts[0])
    assert "Error parsing" not in capsys.readouterr().out
    pasted = DeGuSettings.from_infotext(params)
    assert pasted == dataclasses.replace(settings, show_mask=False, generic=generic.strip())
