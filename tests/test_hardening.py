"""Bad input, leaked state, interrupts, other extensions, fuzz and soak (issue: hardening)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_degu.plan import check_settings, plan_image
from lib_degu.prompts import find_subject, make_generic_prompt
from lib_degu.settings import DeGuSettings
from tests.a1111_support import degu_script, run, script_callbacks, shared, unet_hook_count
from tests.fake_a1111 import harness

ON = {"enabled": True, "subject": "sks", "generic": "a"}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5), st.integers()),
)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(st.lists(junk, max_size=16), st.text(max_size=80), st.text(max_size=12), st.text(max_size=6))
def test_fuzz_settings_and_prompts_never_raise_anything_but_a_clear_value_error(args, prompt, subject, generic):
    try:
        s = DeGuSettings.from_args(args)
    except ValueError as error:
        assert str(error).startswith("DeGu: ")
    else:
        assert all(math.isfinite(getattr(s, n)) for n in ("identity_scale", "context_scale", "balance"))
    out = make_generic_prompt(prompt, subject, generic)
    assert isinstance(out, str)
    plan = plan_image([(prompt, 1.0)], DeGuSettings(enabled=True, subject=subject, generic=generic))
    assert plan.active == bool(find_subject(prompt, subject))


@pytest.mark.parametrize(
    ("subject", "generic", "message"),
    [
        ("", "a", "no subject token given"),
        ("   ", "a", "no subject token given"),
        ("sks", "SKS", "equals the subject"),
        ("sks", "sks dog", "contains the subject 'sks'"),
    ],
)
def test_settings_that_cannot_work_name_the_problem(subject, generic, message):
    assert message in check_settings(DeGuSettings(enabled=True, subject=subject, generic=generic))


@pytest.fixture
def host():
    with harness.host_session(seed=0) as model:
        yield model


@pytest.mark.parametrize(
    ("prompt", "settings_", "expect"),
    [
        ("<lora:sks:1> a dog", ON, "not found"),
        ("a photo of a cat", ON, "not found"),
        ("sks", ON, None),  # prompt of only the subject
        ("(sks:0) dog", ON, None),
        ("(sks:-1) dog", ON, None),
        ("a ((sks dog", ON, None),  # unbalanced brackets
        ("un chien sks 🐶 éà", ON, None),
        (", ".join(["a red ball"] * 30) + ", sks dog", ON, None),  # several 75-token chunks
        ("a photo of sks dog", {"enabled": True, "subject": "sks", "generic": "sks dog"}, "contains the subject"),
        ("a photo of sks dog", {"enabled": True, "subject": ""}, "no subject"),
    ],
)
def test_bad_input_gets_a_message_and_a_normal_image(host, prompt, settings_, expect):
    processed = run(settings_, prompt=prompt)
    assert torch.isfinite(processed.latents).all()
    comments = list(processed.p.comments)
    assert not [c for c in comments if "error" in c.lower()]
    if expect:
        assert any(expect in c for c in comments)
        assert torch.equal(processed.latents, run(None, prompt=prompt).latents)


def test_bad_api_args_are_reported_not_raised(host):
    for args in ([True, "sks", "a", "lots"], [True, "sks", "a", float("nan")], [{"enabled": True, "colour": 1}],
                 [True] * 20):
        script = degu_script.DeGuScript()
        script.args_from, script.args_to = 0, len(args)
        p = harness.FakeProcessing(prompt="sks dog", steps=2, scripts=[script], script_args=args)
        processed = harness.txt2img(p)
        assert any(c.startswith("DeGu: ") for c in p.comments), args
        assert torch.isfinite(processed.latents).all()


@pytest.mark.parametrize(
    ("bad", "source", "batched"),
    [(float("nan"), "difference", True), (float("inf"), "attention", True), (float("nan"), "attention", False)],
)
def test_non_finite_generic_prediction_steps_aside_and_says_so(host, bad, source, batched):
    """The generic rows never enter A1111's own combine (it reads the prompt and uncond rows by index),
    also when batch_cond_uncond is off and they share a call with prompt rows: DeGu's guard is enough."""
    shared.opts.batch_cond_uncond = batched
    plain = run(None, batch_size=2).latents
    generic_cond = host.get_learned_conditioning(["a photo of a dog on a beach"])[0]
    unet = host.model.diffusion_model
    poisoned: list[int] = []

    def poison(module, args, kwargs, output):
        context = kwargs["encoder_hidden_states"]
        rows = [r for r in range(context.shape[0]) if torch.equal(context[r], generic_cond)]
        output.sample[rows] = bad
        poisoned.extend(rows)
        return output

    handle = unet.register_forward_hook(poison, with_kwargs=True)
    try:
        processed = run({**ON, "mask_source": source, "context_scale": 2.0}, batch_size=2)
    finally:
        handle.remove()
    assert poisoned
    # The prompt and uncond rows shared a call with the generic rows: on CPUs whose kernels block by
    # batch size (AVX-512/AMX) they round apart from plain CFG's call, 9e-5 on latents of size 48.
    torch.testing.assert_close(processed.latents, plain, rtol=0, atol=1e-3)
    assert any("non-finite values in 8 image-step(s)" in c for c in processed.p.comments)


def test_another_combine_denoised_wrapper_still_applies(host):
    """A dynamic-thresholding-like extension wrapping combine_denoised on the instance first."""
    from modules import scripts

    class Clamp(scripts.Script):
        def title(self):
            return "clamp"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            denoiser = p.sampler.model_wrap_cfg
            original = denoiser.combine_denoised
            denoiser.combine_denoised = lambda *a: original(*a).clamp(-0.5, 0.5)

    def generate(with_degu):
        scripts_ = [Clamp()]
        args = []
        if with_degu:
            script = degu_script.DeGuScript()
            script.args_from, script.args_to = 0, 14
            scripts_.append(script)
            from tests.a1111_support import script_args

            args = script_args(**{**ON, "mask_source": "full"})
        scripts_[0].args_from = scripts_[0].args_to = len(args)
        p = harness.FakeProcessing(prompt="sks dog", steps=3, scripts=scripts_, script_args=args)
        return harness.txt2img(p).latents

    clamped = generate(False)
    assert torch.allclose(generate(True), clamped, atol=1e-5)


def _soak(generations: int, seed: int) -> None:
    rng = random.Random(seed)
    unet_model = shared.sd_model.model.diffusion_model
    hooks_before = unet_hook_count(unet_model)
    callbacks_before = {k: len(v) for k, v in script_callbacks.callback_map.items()}
    interrupt_at: list[int | None] = [None]

    def maybe_interrupt(params):
        if interrupt_at[0] is not None and params.denoiser.step == interrupt_at[0]:
            shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(maybe_interrupt, name="soak")
    try:
        for _ in range(generations):
            interrupt_at[0] = rng.choice([None, None, None, 1, 2])
            shared.state.interrupted = shared.state.skipped = False
            shared.opts.batch_cond_uncond = rng.random() < 0.8
            shared.opts.skip_early_cond = rng.choice([0.0, 0.0, 0.3])
            shared.opts.pad_cond_uncond = rng.random() < 0.3
            batch = rng.choice([1, 2])
            choices = ["sks dog on a beach", "a cat", "sks AND sand:0.5", "[sks:cat:2] toy", "sks, " + "town, " * 40]
            prompts = [rng.choice(choices) for _ in range(batch)]
            degu = None
            if rng.random() < 0.8:
                degu = {
                    **ON,
                    "enabled": rng.random() < 0.85,
                    "mask_source": rng.choice(["attention", "difference", "full"]),
                    "balance": rng.uniform(-1, 1),
                    "context_scale": rng.uniform(0, 3),
                    "start": rng.choice([0.0, 0.3]),
                    "show_mask": rng.random() < 0.2,
                }
            size = rng.choice([48, 64, 80])
            processed = run(degu, prompt=prompts, batch_size=batch, width=size, height=rng.choice([48, 64]),
                            steps=rng.choice([2, 3, 4]), enable_hr=rng.random() < 0.25, seed=rng.randrange(1000),
                            sampler_name=rng.choice(["Euler", "Euler", "LCM", "DDIM", "DDIM CFG++", "PLMS"]),
                            negative_prompt=rng.choice(["", "blurry", "ugly, " * 40]),
                            s_min_uncond=rng.choice([0.0, 0.0, 100.0]))
            assert torch.isfinite(processed.latents).all()
            assert not [c for c in processed.p.comments if "error" in c.lower()]
            assert unet_hook_count(unet_model) == hooks_before
    finally:
        script_callbacks.remove_callbacks_for_function(maybe_interrupt)
        shared.state.interrupted = shared.state.skipped = False
    assert {k: len(v) for k, v in script_callbacks.callback_map.items()} == callbacks_before
    shared.opts.batch_cond_uncond, shared.opts.skip_early_cond, shared.opts.pad_cond_uncond = True, 0.0, False
    assert torch.equal(run({"enabled": False}).latents, run(None).latents)


@pytest.mark.slow
def test_soak_a1111(host, soak_generations):
    _soak(soak_generations(200), seed=7)
