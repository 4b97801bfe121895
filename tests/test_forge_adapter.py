"""The Forge adapter and script inside the simulated Forge host (tests/fake_forge)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lib_degu.settings import DeGuSettings
from tests.a1111_support import SCRIPT_PATH, rows_per_call, script_args
from tests.fake_forge import harness

PURGE = ("lib_degu.hosts.forge", "degu_forge_script")
DEFAULTS = {"enabled": True, "subject": "sks", "generic": "a"}
# The generic rows on every step: most tests check the formula and the rows step by step; the
# context reuse of the default ("context refresh every 3 steps") has tests of its own.
ON = {**DEFAULTS, "context_refresh": 1}
FULL = {**ON, "mask_source": "full"}


@pytest.fixture(autouse=True)
def forge():
    harness.install(also_purge=PURGE)
    try:
        spec = importlib.util.spec_from_file_location("degu_forge_script", SCRIPT_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.HOST == "forge"
        yield module
    finally:
        harness.uninstall()


def _run(script_module, kind="sd15", degu=None, host=None, **kwargs):
    host = host or harness.make_host(kind)
    kwargs.setdefault("prompt", "a photo of sks dog on a beach")
    p = host.processing(**kwargs)
    scripts = [] if degu is None else [(script_module.DeGuScript(), script_args(**degu))]
    processed = host.run(p, *scripts)
    processed.p = p
    return torch.stack(list(processed.images)), processed


def _no_errors(processed):
    assert not [c for c in processed.p.comments if "error" in c.lower() or "could not" in c.lower()]


def test_disabled_is_bit_identical(forge):
    plain, _ = _run(forge)
    off, _ = _run(forge, degu={"enabled": False, "subject": "sks"})
    assert torch.equal(off, plain)


def test_full_mask_unit_scales_equals_forge_standard_result(forge):
    plain, _ = _run(forge)
    out, processed = _run(forge, degu=FULL)
    _no_errors(processed)
    assert torch.allclose(out, plain, atol=1e-5)


def test_generic_rows_in_the_single_model_call(forge):
    host = harness.make_host("sd15")
    rows: list[int] = []
    handle = host.sd_model.forge_objects.unet.model.diffusion_model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append((args[0] if args else kwargs["sample"]).shape[0]), with_kwargs=True
    )
    try:
        _run(forge, degu={**ON, "context_scale": 1.5}, host=host, batch_size=2)
    finally:
        handle.remove()
    assert rows and all(r == 6 for r in rows)  # uncond, generic and prompt rows of 2 images in one call


@pytest.mark.parametrize("source", ["attention", "difference"])
def test_degu_changes_the_image(forge, source):
    plain, _ = _run(forge)
    out, processed = _run(forge, degu={**ON, "mask_source": source, "context_scale": 2.0})
    _no_errors(processed)
    assert not torch.allclose(out, plain, atol=1e-3)


def test_balance_minus_one_equals_cfg_on_the_generic_prompt(forge):
    generic, _ = _run(forge, prompt="a photo of a dog on a beach")
    out, _ = _run(forge, degu={**ON, "balance": -1.0, "mask_source": "difference"})
    assert torch.allclose(out, generic, atol=1e-4)


def test_no_uncond_path_cfg_one_and_flux(forge):
    plain, _ = _run(forge, cfg_scale=1.0)
    assert torch.allclose(_run(forge, degu=FULL, cfg_scale=1.0)[0], plain, atol=1e-5)
    changed, processed = _run(forge, degu={**ON, "balance": -1.0, "mask_source": "difference"}, cfg_scale=1.0)
    generic, _ = _run(forge, prompt="a photo of a dog on a beach", cfg_scale=1.0)
    assert torch.allclose(changed, generic, atol=1e-4)
    flux_plain, _ = _run(forge, kind="flux")
    flux_full, _ = _run(forge, kind="flux", degu=FULL)
    assert torch.allclose(flux_full, flux_plain, atol=1e-5)
    flux, processed = _run(forge, kind="flux", degu={**ON, "context_scale": 1.0, "identity_scale": 0.5})
    _no_errors(processed)
    assert not torch.allclose(flux, flux_plain, atol=1e-4)
    # Flux: the joint-attention map (indicator-value trick) is the mask that ran.
    assert processed.p.extra_generation_params.get("DeGu mask used") == "attention"
    flux_difference, _ = _run(forge, kind="flux", degu={**ON, "identity_scale": 0.5, "mask_source": "difference"})
    assert not torch.allclose(flux, flux_difference, atol=1e-5)


def test_another_extensions_post_cfg_function_still_applies(forge):
    from modules import scripts

    class Other(scripts.Script):
        def title(self):
            return "other"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()
            unet.set_model_sampler_post_cfg_function(lambda a: a["denoised"] * 0.5)
            p.sd_model.forge_objects.unet = unet

    host = harness.make_host("sd15")
    halved = host.run(host.processing(prompt="a photo of sks dog"), Other())
    p = host.processing(prompt="a photo of sks dog")
    both = host.run(p, Other(), (forge.DeGuScript(), script_args(**FULL)))
    assert torch.allclose(torch.stack(list(both.images)), torch.stack(list(halved.images)), atol=1e-5)


def _deep_snapshot(value):
    """A comparable picture of a patcher's state: containers by content, tensors by value, every other
    object (functions, patch objects, the model) by identity."""
    if isinstance(value, dict):
        return ("dict", {key: _deep_snapshot(item) for key, item in value.items()})
    if isinstance(value, (list, tuple, set)):
        items = sorted(value, key=repr) if isinstance(value, set) else value
        return (type(value).__name__, [_deep_snapshot(item) for item in items])
    if torch.is_tensor(value):
        return ("tensor", value.detach().clone())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ("object", id(value), type(value).__name__)


def _assert_same(before, after, path="patcher"):
    if isinstance(before, tuple) and before and before[0] == "tensor":
        assert isinstance(after, tuple) and after[0] == "tensor" and torch.equal(before[1], after[1]), path
    elif isinstance(before, tuple) and before and before[0] == "dict":
        assert isinstance(after, tuple) and after[0] == "dict" and before[1].keys() == after[1].keys(), path
        for key in before[1]:
            _assert_same(before[1][key], after[1][key], f"{path}[{key!r}]")
    elif isinstance(before, tuple) and before and before[0] in ("list", "tuple", "set"):
        assert isinstance(after, tuple) and after[0] == before[0] and len(after[1]) == len(before[1]), path
        for index, (b, a) in enumerate(zip(before[1], after[1], strict=True)):
            _assert_same(b, a, f"{path}[{index}]")
    else:
        assert before == after, path


def test_nothing_left_on_the_shared_unet(forge):
    """The shared UnetPatcher every pass starts from, compared deeply before and after DeGu's passes:
    its model_options (transformer_options and attention patches included) and its other fields."""
    host = harness.make_host("sd15")
    original = host.unet
    # Options another extension left on the shared patcher: DeGu must leave them exactly as they are.
    original.set_model_attn2_patch(lambda q, k, v, extra_options: (q, k, v))
    original.set_model_attn2_replace(lambda q, k, v, extra_options: q, "input", 1)
    original.model_options.setdefault("transformer_options", {})["foreign"] = {"weight": 0.5}
    before = _deep_snapshot({**vars(original), "model_options": original.model_options})
    model = original.model.diffusion_model
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    _run(forge, degu={**ON, "mask_source": "attention"}, host=host)
    _run(forge, degu={**ON}, host=host, enable_hr=True, hr_scale=2.0, hr_cfg=7.0)
    _run(forge, degu={**ON, "context_scale": 2.0}, host=host, cfg_scale=1.0)
    assert host.sd_model.forge_objects.unet is not original  # the passes did run on clones
    _assert_same(before, _deep_snapshot({**vars(original), "model_options": original.model_options}))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before


def test_nothing_left_on_the_shared_flux_patcher_or_its_attention_kernel(forge):
    from backend.nn import flux

    host = harness.make_host("flux")
    kernel = flux.attention
    before = _deep_snapshot({**vars(host.unet), "model_options": host.unet.model_options})
    _, processed = _run(forge, kind="flux", degu=ON, host=host)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
    assert flux.attention is kernel
    _assert_same(before, _deep_snapshot({**vars(host.unet), "model_options": host.unet.model_options}))


def test_hires_with_its_own_cfg_and_idempotent_setup(forge):
    plain, _ = _run(forge, enable_hr=True, hr_scale=2.0, hr_cfg=1.0)
    out, processed = _run(forge, degu={**ON, "context_scale": 1.5}, enable_hr=True, hr_scale=2.0, hr_cfg=1.0)
    _no_errors(processed)
    assert out.shape == plain.shape and out.shape[-1] == 16
    assert not torch.allclose(out, plain, atol=1e-3)
    full, _ = _run(forge, degu=FULL, enable_hr=True, hr_scale=2.0, hr_cfg=1.0)
    assert torch.allclose(full, plain, atol=1e-5)


def test_batch_of_two_different_prompts(forge):
    prompts = ["a photo of sks dog", "a photo of a cat"]
    plain, _ = _run(forge, prompt=prompts, batch_size=2)
    out, processed = _run(forge, degu={**ON, "context_scale": 2.0}, prompt=prompts, batch_size=2)
    assert not torch.allclose(out[0], plain[0], atol=1e-3)
    assert torch.allclose(out[1], plain[1], atol=1e-5)
    assert any("image(s) 2" in c for c in processed.p.comments)


def test_batch_prompts_of_different_chunk_counts(forge):
    """77 and 154 tokens in one batch: generic rows padded like the host's prompt rows (stack_conds)."""
    long = "sks cat on a mat, " + "a very long description of a sunny seaside town, " * 9
    prompts, generic_prompts = ["a photo of sks dog", long], ["a photo of a dog", long.replace("sks", "a", 1)]
    generic_plain, _ = _run(forge, prompt=generic_prompts, batch_size=2)
    settings = {**ON, "balance": -1.0, "mask_source": "difference"}
    out, processed = _run(forge, degu=settings, prompt=prompts, batch_size=2)
    _no_errors(processed)
    assert torch.allclose(out, generic_plain, atol=1e-4)


def test_and_prompt_steps_aside_with_a_message(forge):
    plain, _ = _run(forge, prompt="sks dog AND a beach")
    out, processed = _run(forge, degu=ON, prompt="sks dog AND a beach")
    assert torch.equal(out, plain)
    assert any("AND prompts" in c for c in processed.p.comments)


def test_memory_estimate_counts_the_larger_batch(forge):
    from backend.sampling import sampling_function

    _run(forge, degu=ON)
    with_degu = sampling_function.LAST_MEMORY_ESTIMATE
    _run(forge)
    without = sampling_function.LAST_MEMORY_ESTIMATE
    assert with_degu > without


def test_split_batches_still_find_the_generic_rows(forge):
    from backend.sampling import sampling_function

    settings = {**ON, "context_scale": 1.5, "mask_source": "attention"}
    batched, _ = _run(forge, degu=settings)
    host = harness.make_host("sd15")
    sampling_function.FREE_MEMORY = 1  # every entry in its own call
    rows: list[int] = []
    handle = host.unet.model.diffusion_model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append((args[0] if args else kwargs["sample"]).shape[0]), with_kwargs=True
    )
    try:
        split, processed = _run(forge, degu=settings, host=host)
    finally:
        handle.remove()
    assert rows and max(rows) == 1  # really split: one row per call
    _no_errors(processed)
    assert torch.allclose(split, batched, atol=1e-4)


def test_the_forge_script_reads_every_positional_arg_into_its_own_field(forge):
    """Positional API/UI args reach the Forge script's settings field by field: every value differs
    from its default and from the others, and the infotext the run writes gives them all back."""
    custom = DeGuSettings(
        enabled=True, subject="sks", generic="a", identity_scale=1.25, context_scale=0.75, balance=-0.25,
        mask_source="difference", threshold=0.4, softness=0.15, blur=2.5, ema=0.45, start=0.05, end=0.95,
        show_mask=True, context_refresh=5, snap=2, layout_pass=True,
    )
    defaults = DeGuSettings()
    assert all(getattr(custom, name) != getattr(defaults, name) for name in DeGuSettings.names())
    numbers = [getattr(custom, name) for name in DeGuSettings.names() if isinstance(getattr(custom, name), float)]
    assert len(set(numbers)) == len(numbers)  # a swapped pair of fields cannot go unnoticed
    _, processed = _run(forge, degu={name: getattr(custom, name) for name in DeGuSettings.names()})
    _no_errors(processed)
    assert DeGuSettings.from_infotext(processed.p.extra_generation_params) == custom.replace(show_mask=False)
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"


def test_a_sampler_cfg_function_still_applies(forge):
    """A dynamic-thresholding-like cfg function still replaces the CFG formula (DeGu's combination goes
    through it: see the RescaleCFG test in tests/test_forge_neo_adapter.py)."""
    from modules import scripts

    class Thresholding(scripts.Script):
        def title(self):
            return "cfg function"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()
            unet.set_model_sampler_cfg_function(lambda a: a["uncond"] + (a["cond"] - a["uncond"]) * 3.0)
            p.sd_model.forge_objects.unet = unet

    host = harness.make_host("sd15")
    alone = host.run(host.processing(prompt="a photo of sks dog"), Thresholding())
    p = host.processing(prompt="a photo of sks dog")
    both = host.run(p, Thresholding(), (forge.DeGuScript(), script_args(**FULL)))
    assert torch.allclose(torch.stack(list(both.images)), torch.stack(list(alone.images)), atol=1e-5)


@pytest.mark.slow
def test_soak_forge(forge, soak_generations):
    import random

    rng = random.Random(11)
    host = harness.make_host("sd15")
    model = host.unet.model.diffusion_model
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    options = repr(sorted(host.unet.model_options))
    for _ in range(soak_generations(100)):
        degu = None
        if rng.random() < 0.85:
            degu = {
                **ON,
                "enabled": rng.random() < 0.9,
                "mask_source": rng.choice(["attention", "difference", "full"]),
                "balance": rng.uniform(-1, 1),
                "context_scale": rng.uniform(0, 3),
                "end": rng.choice([0.5, 1.0]),
            }
        batch = rng.choice([1, 2])
        out, processed = _run(
            forge,
            degu=degu,
            host=host,
            prompt=[rng.choice(["sks dog", "a cat", "sks on sand"]) for _ in range(batch)],
            batch_size=batch,
            cfg_scale=rng.choice([1.0, 7.0]),
            width=rng.choice([48, 64]),
            enable_hr=rng.random() < 0.2,
            hr_cfg=rng.choice([1.0, 5.0]),
        )
        assert torch.isfinite(out).all()
        assert not [c for c in processed.p.comments if "error" in c.lower()]
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert repr(sorted(host.unet.model_options)) == options


def _coupling_extension(kind: str):
    """StyleAlign-like (an attn1 replacement for every block) or reference-only-like (a block modifier)
    scripts from Forge's built-in extensions; the fake UNet does not run them, DeGu must see them."""
    from modules import scripts

    class Coupling(scripts.Script):
        def title(self):
            return kind

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()
            if kind == "stylealign":
                unet.set_model_replace_all(lambda q, k, v, transformer_options: q, "attn1")
            else:
                unet.add_block_modifier(lambda h, flag, transformer_options: h)
            p.sd_model.forge_objects.unet = unet

    return Coupling()


@pytest.mark.parametrize("kind", ["stylealign", "reference"])
@pytest.mark.parametrize("degu_first", [True, False])
def test_batch_coupling_extensions_get_a_separate_generic_call(forge, kind, degu_first, capsys):
    """StyleAlign / reference-only couple the rows of a call: DeGu leaves the batch to the host's rows
    and runs the generic prompt as its own call; the math is unchanged (balance -1 = generic prompt)."""

    def generate(degu, prompt="a photo of sks dog on a beach"):
        host = harness.make_host("sd15")
        rows: list[int] = []
        host.sd_model.forge_objects.unet.model.diffusion_model.register_forward_pre_hook(
            lambda m, args, kwargs: rows.append((args[0] if args else kwargs["sample"]).shape[0]), with_kwargs=True
        )
        p = host.processing(prompt=prompt, batch_size=2)
        scripts = [_coupling_extension(kind)]
        if degu is not None:
            scripts.insert(0 if degu_first else 1, (forge.DeGuScript(), script_args(**degu)))
        processed = host.run(p, *scripts)
        processed.p = p
        return torch.stack(list(processed.images)), processed, rows

    generic_plain, _, _ = generate(None, prompt="a photo of a dog on a beach")
    out, processed, rows = generate({**ON, "balance": -1.0})
    assert torch.allclose(out, generic_plain, atol=1e-4)
    assert rows[0::2] == [4] * (len(rows) // 2) and rows[1::2] == [2] * (len(rows) // 2)  # host call, generic call
    assert any("couples the images of a batch" in c and "separate" in c for c in processed.p.comments)
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"
    assert capsys.readouterr().out.count("separate model call") == 1  # announced once in the console
    plain, _, _ = generate(None)
    assert torch.allclose(generate(FULL)[0], plain, atol=1e-5)


def test_a_foreign_wrapper_that_does_not_chain_falls_back_to_a_separate_call(forge, capsys):
    """Another extension replaces model_function_wrapper after DeGu without calling DeGu's: DeGu never
    sees its rows, so it runs the generic prompt separately and says so once."""
    from modules import scripts

    class Overwrite(scripts.Script):
        def title(self):
            return "overwrite"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()
            unet.model_options["model_function_wrapper"] = lambda apply_model, args: apply_model(
                args["input"], args["timestep"], **args["c"]
            )
            p.sd_model.forge_objects.unet = unet

    host = harness.make_host("sd15")
    generic_run = host.run(host.processing(prompt="a photo of a dog on a beach"), Overwrite())
    generic_plain = torch.stack(list(generic_run.images))
    p = host.processing(prompt="a photo of sks dog on a beach")
    processed = host.run(p, (forge.DeGuScript(), script_args(**{**ON, "balance": -1.0})), Overwrite())
    assert torch.allclose(torch.stack(list(processed.images)), generic_plain, atol=1e-4)
    assert capsys.readouterr().out.count("could not join the batch") == 1


def test_sd35_clip_lg_and_t5_conds_with_the_attention_mask(forge):
    """SD3.5: dict conds (CLIP-L/G tokens then T5 tokens in one crossattn, pooled L+G vector), an MM-DiT
    whose joint attention gives the mask (tests/test_mmdit_hosts.py)."""
    plain, _ = _run(forge, kind="sd35")
    assert torch.equal(_run(forge, kind="sd35", degu={**ON, "enabled": False})[0], plain)
    assert torch.allclose(_run(forge, kind="sd35", degu=FULL)[0], plain, atol=1e-5)
    for extra in ({}, {"cfg_scale": 1.0}, {"enable_hr": True, "hr_scale": 2.0, "hr_cfg": 5.0}):
        generic, _ = _run(forge, kind="sd35", prompt="a photo of a dog on a beach", **extra)
        out, processed = _run(forge, kind="sd35", degu={**ON, "balance": -1.0, "mask_source": "difference"}, **extra)
        _no_errors(processed)
        assert torch.allclose(out, generic, atol=1e-4)
    host = harness.make_host("sd35")
    rows: list[int] = []
    host.sd_model.forge_objects.unet.model.diffusion_model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(args[0].shape[0]), with_kwargs=True
    )
    out, processed = _run(forge, degu={**ON, "context_scale": 2.0}, host=host, batch_size=2)
    assert rows and all(r == 6 for r in rows)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
    assert not any("attention mask unavailable" in c for c in processed.p.comments)
    assert not torch.allclose(out[0], plain[0], atol=1e-3)  # image 1 has the same seed as the single run


def test_the_mask_that_ran_is_in_the_image_infotext(forge):
    _, processed = _run(forge, degu={**ON, "mask_source": "difference"})
    assert "DeGu mask used: difference" in processed.infotexts[0]
    _, flux = _run(forge, kind="flux", degu=ON)
    assert "DeGu mask used: attention" in flux.infotexts[0]


def test_prompt_editing_switches_the_generic_rows_at_the_hosts_step(forge):
    generic_plain, _ = _run(forge, prompt="a photo of [a dog:a cat:1] on a beach", steps=6)
    settings = {**ON, "balance": -1.0, "mask_source": "difference"}
    out, processed = _run(forge, prompt="a photo of [sks dog:sks cat:1] on a beach", degu=settings, steps=6)
    _no_errors(processed)
    assert torch.allclose(out, generic_plain, atol=1e-4)
    unswitched, _ = _run(forge, prompt="a photo of a dog on a beach", steps=6)
    assert not torch.allclose(out, unswitched, atol=1e-4)  # the switch did happen


@pytest.mark.parametrize(
    ("bad", "source", "split"),
    [(float("nan"), "difference", False), (float("inf"), "attention", False), (float("nan"), "attention", True)],
)
def test_non_finite_generic_rows_cannot_poison_the_hosts_rows(forge, bad, source, split):
    """Forge's batcher adds the zero-strength generic entry as ``output * 0``, and NaN * 0 = NaN: the
    generic rows must not reach the host's result (batched or in calls of their own). DeGu then steps
    aside for those steps and says so."""
    from backend.sampling import sampling_function
    from modules import shared

    host = harness.make_host("sd15")
    if split:
        sampling_function.FREE_MEMORY = 1  # every entry in its own call
    plain, _ = _run(forge, host=host, batch_size=2)
    generic_cond = shared.sd_model.get_learned_conditioning(["a photo of a dog on a beach"])[0]
    poisoned: list[int] = []

    def poison(module, args, kwargs, output):
        context = kwargs["encoder_hidden_states"]
        rows = [r for r in range(context.shape[0]) if torch.equal(context[r], generic_cond.to(context))]
        out = output[0] if isinstance(output, tuple) else output.sample
        out[rows] = bad
        poisoned.extend(rows)
        return output

    handle = host.unet.model.diffusion_model.register_forward_hook(poison, with_kwargs=True)
    try:
        out, processed = _run(forge, degu={**ON, "mask_source": source, "context_scale": 2.0}, host=host, batch_size=2)
    finally:
        handle.remove()
    assert poisoned  # the generic rows ran and were poisoned
    assert torch.isfinite(out).all()
    assert torch.allclose(out, plain, atol=1e-5)
    assert any("non-finite values in 6 image-step(s)" in c for c in processed.p.comments)


def _step_recorder(steps: list[dict]):
    """A script that runs before DeGu's on the pass's patcher: a model-function wrapper (DeGu chains it)
    records every row the model computed, with the conditioning it ran on and whether uncond ran; a
    post-CFG function (DeGu's goes first) records the host's prompt prediction, DeGu's result and mask."""
    from modules import scripts

    class Recorder(scripts.Script):
        def title(self):
            return "recorder"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()

            def wrapper(apply_model, args):
                output = apply_model(args["input"], args["timestep"], **args["c"])
                steps.append({"rows": output.clone(), "context": args["c"]["c_crossattn"].clone(),
                              "uncond_ran": 1 in args["cond_or_uncond"]})
                return output

            def post_cfg(args):
                steps[-1].update(s=args["cond_denoised"].clone(), u=args["uncond_denoised"].clone(),
                                 out=args["denoised"].clone(),
                                 mask=p.sd_model.forge_objects.unet.degu_pass.guide.last_mask.clone())
                return args["denoised"]

            unet.model_options["model_function_wrapper"] = wrapper
            unet.set_model_sampler_post_cfg_function(post_cfg)
            p.sd_model.forge_objects.unet = unet

    return Recorder()


@pytest.mark.parametrize("skip", ["CFG 1", "Skip Early CFG", "NGMS"])
def test_no_uncond_steps_use_the_exact_no_uncond_formula(forge, skip):
    """CFG 1, and the steps Skip Early CFG or NGMS run at scale 1, have no uncond on Forge: DeGu must give
    g + a_id * M * (s - g) there and the full formula on the other steps, checked step by step from the
    model's own rows at non-unit scales with a mask between 0 and 1."""
    from modules import shared

    a_id, a_ctx = 0.6, 1.7
    cfg_scale = 1.0 if skip == "CFG 1" else 7.0
    kwargs = {"s_min_uncond": 100.0} if skip == "NGMS" else {}  # NGMS: every odd step (all sigmas < 100)
    host = harness.make_host("sd15")
    if skip == "Skip Early CFG":
        shared.opts.skip_early_cond = 0.5
    prompt, generic_prompt = "a photo of sks dog on a beach", "a photo of a dog on a beach"
    generic_cond = shared.sd_model.get_learned_conditioning([generic_prompt])[0]
    steps: list[dict] = []
    p = host.processing(prompt=prompt, cfg_scale=cfg_scale, steps=4, **kwargs)
    settings = {**ON, "mask_source": "difference", "identity_scale": a_id, "context_scale": a_ctx}
    processed = host.run(p, _step_recorder(steps), (forge.DeGuScript(), script_args(**settings)))
    processed.p = p
    _no_errors(processed)
    assert len(steps) == 4
    assert {step["uncond_ran"] for step in steps} == ({False} if skip == "CFG 1" else {True, False})
    for step in steps:
        generic_rows = [r for r in range(step["context"].shape[0]) if torch.equal(step["context"][r], generic_cond)]
        assert len(generic_rows) == 1
        s, g, m = step["s"], step["rows"][generic_rows], step["mask"]
        assert ((m > 0.05) & (m < 0.95)).any() and float(m.max() - m.min()) > 0.2  # a mask between 0 and 1
        if step["uncond_ran"]:
            u = step["u"]
            expected = u + cfg_scale * (a_id * m * (s - u) + a_ctx * (1 - m) * (g - u))
        else:
            expected = g + a_id * m * (s - g)
        assert torch.allclose(step["out"], expected, atol=1e-5, rtol=1e-5)


def test_attention_is_read_from_each_images_prompt_row_not_its_generic_row(forge, monkeypatch):
    """Forge batches its entries in its own order: with sharpened cross-attention, the map DeGu guides
    with is, per image, the explicit softmax of that image's prompt row (one Euler step)."""
    from modules import shared

    from lib_degu.step import Guide
    from tests.attention_reference import explicit_map, recorded_cross_attention, sharpen_cross_attention

    host = harness.make_host("sd15")
    unet = host.unet.model.diffusion_model
    sharpen_cross_attention(unet)
    maps: list = []
    delta = Guide.delta
    monkeypatch.setattr(Guide, "delta", lambda self, *a, **k: maps.append(k["attention"]) or delta(self, *a, **k))
    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    generic_prompts = ["a photo of a dog on a beach", "a cat in snow"]
    positions = [[4], [1]]  # after BOS: one token per word in the simulated tokenizer
    with recorded_cross_attention(unet) as calls:
        _, processed = _run(forge, degu={**ON, "context_scale": 1.5}, host=host, prompt=prompts, batch_size=2, steps=1)
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
    assert len(maps) == 1 and maps[0].shape == (2, 8, 8)
    context = calls[0][2]

    def row_of(text):
        cond = shared.sd_model.get_learned_conditioning([text])[0].to(context)
        (row,) = [r for r in range(context.shape[0]) if torch.equal(context[r], cond)]
        return row

    for image in range(2):
        prompt_map = explicit_map(calls, row_of(prompts[image]), positions[image], (8, 8))
        generic_map = explicit_map(calls, row_of(generic_prompts[image]), positions[image], (8, 8))
        assert float((prompt_map - generic_map).abs().max()) > 1e-2  # the rows do attend differently
        assert torch.allclose(maps[0][image].double(), prompt_map, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img inpaint"])
def test_inpainting_model_generic_rows_carry_their_images_conditioning(forge, mode, kind):
    """A 9-channel inpainting UNet gets latent + mask + masked-image latent per row (Forge puts
    ``c_concat`` on every entry and the generic entry is a copy of the prompt's): mask 1 equals the host,
    balance -1 equals plain CFG on the generic prompt, and in every call a generic row's extra channels
    are those of its image's prompt row (in img2img the images' masked latents differ)."""
    from modules import shared

    prompts = ["a photo of sks dog on a beach", "sks cat in snow"]
    generic_prompts = ["a photo of a dog on a beach", "a cat in snow"]
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:7, 1:6] = 1.0
    host = harness.make_host(kind, inpainting=True)

    def generate(degu, prompt=prompts):
        kwargs = {"prompt": prompt, "batch_size": 2}
        if mode == "txt2img":
            p = host.processing(**kwargs)
        else:
            p = host.img2img(init, image_mask=mask, denoising_strength=0.8, **kwargs)
        torch.manual_seed(7)  # Forge's CFGDenoiser re-noises the kept area with the global RNG each step
        processed = host.run(p, *([] if degu is None else [(forge.DeGuScript(), script_args(**degu))]))
        processed.p = p
        return torch.stack(list(processed.images)), processed

    plain, processed = generate(None)
    assert processed.p.is_using_inpainting_conditioning
    assert torch.allclose(generate(FULL)[0], plain, atol=1e-5)
    generic_plain, _ = generate(None, prompt=generic_prompts)
    generic, processed = generate({**ON, "balance": -1.0, "mask_source": "difference"})
    _no_errors(processed)
    assert torch.allclose(generic, generic_plain, atol=1e-4)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = host.unet.model.diffusion_model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True,
    )
    try:
        guided, processed = generate({**ON, "context_scale": 2.0})
    finally:
        handle.remove()
    _no_errors(processed)
    assert not torch.allclose(guided, plain, atol=1e-3)
    conds = [shared.sd_model.get_learned_conditioning(texts) for texts in (prompts, generic_prompts)]
    conds = [c["crossattn"] if isinstance(c, dict) else c for c in conds]  # SDXL: dict conds
    assert calls and all(x.shape[:2] == (6, 9) for x, _ in calls)  # 2 uncond, 2 generic, 2 prompt rows
    for x, context in calls:
        for image in range(2):
            (prompt_row,) = [r for r in range(6) if torch.equal(context[r], conds[0][image].to(context))]
            (generic_row,) = [r for r in range(6) if torch.equal(context[r], conds[1][image].to(context))]
            assert torch.equal(x[generic_row, 4:], x[prompt_row, 4:])
            if mode != "txt2img":  # the images' masked latents differ: a row from the wrong image would show
                assert not torch.equal(x[prompt_row, 5:], x[prompt_row ^ 1, 5:])


@pytest.mark.parametrize("sampler", ["DDIM", "DDIM CFG++", "PLMS"])
def test_timestep_samplers_through_classic_ddim_eps_estimation(forge, sampler):
    """Forge's DDIM, DDIM CFG++ and PLMS (CFGDenoiserTimesteps: timesteps in, VP latent scaled to the
    model's sigma, the guided x0 turned back into eps; PLMS calls twice in its first step) reach DeGu
    like every other sampler: off is bit-identical, the full mask at scales 1 is the host's result,
    balance -1 is plain CFG on the generic prompt, and the difference mask guides."""
    plain, _ = _run(forge, sampler_name=sampler, steps=4)
    settings = {**ON, "context_scale": 1.5, "mask_source": "difference"}
    off, _ = _run(forge, degu={**settings, "enabled": False}, sampler_name=sampler, steps=4)
    assert torch.equal(off, plain)
    full, processed = _run(forge, degu=FULL, sampler_name=sampler, steps=4)
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == "full"
    assert torch.allclose(full, plain, atol=1e-4)
    generic_plain, _ = _run(forge, prompt="a photo of a dog on a beach", sampler_name=sampler, steps=4)
    generic, _ = _run(forge, degu={**ON, "balance": -1.0, "mask_source": "difference"}, sampler_name=sampler, steps=4)
    assert torch.allclose(generic, generic_plain, atol=1e-4)
    assert not torch.allclose(generic_plain, plain, atol=1e-3)  # the two prompts do differ
    guided, processed = _run(forge, degu=settings, sampler_name=sampler, steps=4)
    _no_errors(processed)
    assert not torch.allclose(guided, plain, atol=1e-3)


def test_timestep_sampler_img2img_inpaint_keeps_the_hosts_blend(forge):
    """DDIM img2img with a mask: the classic eps branch blends the noised original into the scaled
    latent before guidance; DeGu at the full mask equals the host, balance -1 the generic prompt."""
    host = harness.make_host("sd15")
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0

    def inpaint(degu, prompt="a photo of sks dog"):
        p = host.img2img(init, image_mask=mask, denoising_strength=0.75, sampler_name="DDIM", steps=4, prompt=prompt)
        scripts = [] if degu is None else [(forge.DeGuScript(), script_args(**degu))]
        torch.manual_seed(7)  # Forge's CFGDenoiser re-noises the kept area with the global RNG each step
        return torch.stack(list(host.run(p, *scripts).images))

    plain = inpaint(None)
    assert torch.allclose(inpaint(FULL), plain, atol=1e-4)
    generic_plain = inpaint(None, prompt="a photo of a dog")
    assert torch.allclose(inpaint({**ON, "balance": -1.0, "mask_source": "difference"}), generic_plain, atol=1e-4)
    guided = inpaint({**ON, "context_scale": 2.0, "mask_source": "difference"})
    assert not torch.allclose(guided, plain, atol=1e-3)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_refiner_switch_steps_aside_after_the_switch_with_a_message(forge, sampler):
    """Forge's apply_refiner loads the refiner in the middle of the pass: a new shared.sd_model whose
    UnetPatcher has none of DeGu's hooks, recomputed conds, and no new process_before_every_sampling.
    DeGu guides the base model's steps, says it is off after the switch, and leaves the refiner's steps
    to the host; the next generation starts again from the base model."""
    from modules import shared

    host = harness.make_host("sd15")
    rows: dict[str, list[int]] = {"base": [], "refiner": []}

    def count(name):
        return lambda m, args, kwargs: rows[name].append((args[0] if args else kwargs["sample"]).shape[0])

    host.unet.model.diffusion_model.register_forward_pre_hook(count("base"), with_kwargs=True)

    def load_refiner():
        model = harness.checkpoint("refiner", seed=7).loader()
        model.forge_objects.unet.model.diffusion_model.register_forward_pre_hook(count("refiner"), with_kwargs=True)
        return model

    def generate(degu, switch_at=0.5):
        for calls in rows.values():
            calls.clear()
        p = host.processing(prompt="a photo of sks dog on a beach", sampler_name=sampler, steps=4)
        if switch_at is not None:
            p.refiner_checkpoint_info = harness.checkpoint("refiner", seed=7)
            p.refiner_checkpoint_info.loader = load_refiner
            p.refiner_switch_at = switch_at
        scripts = [] if degu is None else [(forge.DeGuScript(), script_args(**degu))]
        processed = host.run(p, *scripts)
        processed.p = p
        return torch.stack(list(processed.images)), processed

    no_refiner, _ = generate(None, switch_at=None)
    plain, processed = generate(None)
    assert processed.p.extra_generation_params["Refiner"] == "refiner"
    calls = {name: len(found) for name, found in rows.items()}  # DDIM makes steps - 1 model calls
    assert calls["base"] == 2 and calls["refiner"] >= 1 and set(rows["base"] + rows["refiner"]) == {2}
    assert not torch.allclose(plain, no_refiner, atol=1e-3)  # the refiner did act
    assert shared.sd_model is not host.sd_model  # the refiner stays loaded until the next generation
    full, _ = generate(FULL)
    assert torch.allclose(full, plain, atol=1e-5)
    guided, processed = generate({**ON, "context_scale": 2.0, "mask_source": "difference"})
    assert shared.sd_model is not host.sd_model
    assert rows == {"base": [3] * calls["base"], "refiner": [2] * calls["refiner"]}  # generic rows: base only
    assert not torch.allclose(guided, plain, atol=1e-3)
    messages = [c for c in processed.p.comments if "refiner" in c and "DeGu is off after the switch" in c]
    assert len(messages) == 1
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"  # it guided before
    # The layout pass does not run with a refiner (the switch happens inside the first pass): one pass.
    layout, processed = generate({**ON, "context_scale": 2.0, "layout_pass": True})
    assert torch.equal(layout, generate({**ON, "context_scale": 2.0})[0])
    assert any("layout pass does not run with a refiner" in c for c in processed.p.comments)
    # Switching before the first model call: DeGu never guides, the result is the host's, bit for bit.
    immediate, processed = generate({**ON, "context_scale": 2.0}, switch_at=0.0)
    assert rows == {"base": [], "refiner": [2] * sum(calls.values())}
    assert torch.equal(immediate, generate(None, switch_at=0.0)[0])
    assert "DeGu mask used" not in processed.p.extra_generation_params
    # The next generation loads the base model back, and DeGu guides all of it again.
    again, processed = generate({**ON, "context_scale": 2.0, "mask_source": "difference"}, switch_at=None)
    assert shared.sd_model is host.sd_model and rows == {"base": [3] * sum(calls.values()), "refiner": []}
    assert not [c for c in processed.p.comments if "refiner" in c]


def _rows_per_call(host):
    return rows_per_call(host.sd_model.forge_objects.unet.model.diffusion_model)


@pytest.mark.parametrize(
    ("degu", "kwargs", "expected"),
    [
        (FULL, {}, [2] * 3),  # M = 1 known before the step: the generic entry never joins
        ({**FULL, "identity_scale": 1.5, "balance": 0.5}, {}, [2] * 3),
        (DEFAULTS, {"steps": 4}, [3, 2, 2, 3]),  # the generic entry is simply absent on reuse steps
        (DEFAULTS, {"prompt": "a photo of [sks dog:sks cat:1] on a beach", "steps": 6}, [3, 2, 3, 2, 2, 3]),
        ({**DEFAULTS, "balance": -1.0}, {}, [3] * 3),
        # Heun calls the model twice per step (once on the last): calls, not steps, are counted.
        (DEFAULTS, {"sampler_name": "Heun"}, [3, 2, 2, 3, 2]),
    ],
    ids=["full", "full-scaled", "defaults", "prompt-editing", "balance-1", "heun"],
)
def test_model_rows_per_call_on_forges_batcher(forge, degu, kwargs, expected):
    host = harness.make_host("sd15")
    with _rows_per_call(host) as rows:
        _, processed = _run(forge, degu=degu, host=host, **kwargs)
    _no_errors(processed)
    assert rows == expected


def test_context_reuse_in_the_hires_pass_and_against_every_step(forge):
    host = harness.make_host("sd15")
    with _rows_per_call(host) as rows:
        reused, processed = _run(forge, degu={**DEFAULTS, "context_scale": 1.5}, host=host, enable_hr=True)
    _no_errors(processed)
    # Each pass measures the context first, then reuses it; the hires pass runs at CFG 1 (no uncond).
    assert rows == [3, 2, 2, 2, 1, 1]
    every_step, _ = _run(forge, degu={**ON, "context_scale": 1.5}, enable_hr=True)
    plain, _ = _run(forge, enable_hr=True)
    assert torch.isfinite(reused).all()
    assert not torch.equal(reused, every_step) and not torch.allclose(reused, plain, atol=1e-3)


LAYOUT = {**ON, "layout_pass": True, "context_scale": 1.5}


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_the_layout_pass_samples_again_from_the_same_noise(forge, sampler):
    """DDIM with eta 1 draws each step's noise from torch's global RNG (seeded here as the real host's
    ImageRNG seeds it): with the mask 1 everywhere (balance +1) the second pass is Forge's own image,
    so it replayed that noise; it ran twice."""
    host = harness.make_host("sd15")
    torch.manual_seed(1)
    plain, _ = _run(forge, host=host, sampler_name=sampler, eta=1.0)
    with _rows_per_call(host) as rows:
        torch.manual_seed(1)
        out, processed = _run(forge, degu={**LAYOUT, "balance": 1.0}, host=host, sampler_name=sampler, eta=1.0)
    _no_errors(processed)
    assert len(rows) == 2 * 3
    assert torch.equal(out, plain)
    assert processed.p.extra_generation_params["DeGu layout pass"] == "True"


def test_the_console_total_progress_bar_counts_both_layout_passes(forge):
    """As on A1111: the bar ends full with the layout pass's second loops (2 batches x 2 passes x 3 steps)."""
    from modules import shared

    host = harness.make_host("sd15")
    for degu, loops in ((None, 2), (LAYOUT, 4)):
        shared.total_tqdm.clear()
        shared.state.job_count = -1  # as the host's state.begin() leaves it for processing
        _, processed = _run(forge, degu=degu, host=host, n_iter=2)
        _no_errors(processed)
        bar = shared.total_tqdm._tqdm
        assert (bar.n, bar.total) == (loops * 3, loops * 3)
    shared.total_tqdm.clear()


def test_the_second_pass_guides_with_the_layout_and_the_launch_patch_is_undone(forge, monkeypatch):
    from modules import sd_samplers_common, shared

    from lib_degu import step

    sources, samplers, progress_texts = [], [], []
    make_mask = step.Guide.make_mask
    launch = sd_samplers_common.Sampler.launch_sampling

    def recording(self, s, g, attention):
        result = make_mask(self, s, g, attention)
        sources.append(result[1])
        progress_texts.append(shared.state.textinfo)
        return result

    def recording_launch(self, steps, func):
        samplers.append(self)
        return launch(self, steps, func)

    monkeypatch.setattr(step.Guide, "make_mask", recording)
    monkeypatch.setattr(sd_samplers_common.Sampler, "launch_sampling", recording_launch)
    host = harness.make_host("sd15")
    plain, _ = _run(forge, host=host)
    samplers.clear()
    out, processed = _run(forge, degu=LAYOUT, host=host, enable_hr=True, hr_scale=2.0, hr_cfg=7.0)
    _no_errors(processed)
    assert sources == ["attention"] * 3 + ["layout"] * 3 + ["layout"] * 3  # base twice, hires reuses it
    assert progress_texts == ["DeGu layout pass 1/2"] * 3 + ["DeGu layout pass 2/2"] * 3 + [None] * 3
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention, layout"
    assert len({id(s) for s in samplers}) == 2  # the base pass and the hires pass
    assert all("launch_sampling" not in vars(s) for s in samplers)
    assert all(s.func.__name__ != "<lambda>" for s in samplers)
