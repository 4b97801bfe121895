"""The Forge adapter and script inside the simulated Forge Neo host (tests/fake_neo; docs/forge_neo.md)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from tests.a1111_support import SCRIPT_PATH, script_args
from tests.fake_neo import harness

PURGE = ("lib_degu.hosts.forge", "degu_neo_script")
ON = {"enabled": True, "subject": "sks", "generic": "a"}
FULL = {**ON, "mask_source": "full"}
PROMPT, GENERIC_PROMPT = "a photo of sks dog on a beach", "a photo of a dog on a beach"
FAMILIES = ["sd15", "flux", "flux_svdq", "chroma", "zimage", "qwen", "lumina", "anima", "wan"]


@pytest.fixture(autouse=True)
def neo():
    harness.install(also_purge=PURGE)
    try:
        spec = importlib.util.spec_from_file_location("degu_neo_script", SCRIPT_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        harness.uninstall()


def _run(script_module, kind="sd15", degu=None, host=None, host_scripts=(), **kwargs):
    host = host or harness.make_host(kind)
    kwargs.setdefault("prompt", PROMPT)
    p = host.processing(**kwargs)
    scripts = [*host_scripts] + ([] if degu is None else [(script_module.DeGuScript(), script_args(**degu))])
    processed = host.run(p, *scripts)
    processed.p = p
    return torch.stack(list(processed.images)), processed


def _no_errors(processed):
    assert not [c for c in processed.p.comments if "error" in c.lower() or "could not" in c.lower()]


def _same(a, b) -> bool:
    """Deep equality of model_options: containers by content, tensors by value, the rest by identity."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    return a is b


def test_neo_is_found_by_capability(neo):
    from backend.sampling import sampling_function

    assert neo.HOST == "forge"  # Neo keeps Forge's backend: the same adapter, chosen by what imports
    # ... and bound to this host's modules, even after the simulated Forge ran in the same process
    assert "fake_neo" in neo.adapter.forge_sampling.__file__
    assert neo.adapter.shared is sys.modules["modules.shared"]
    assert "extra_model_options" in sampling_function.sampling_function.__code__.co_varnames


@pytest.mark.parametrize("kind", FAMILIES)
def test_disabled_is_bit_identical(neo, kind):
    plain, _ = _run(neo, kind)
    off, _ = _run(neo, kind, degu={"enabled": False, "subject": "sks"})
    assert torch.equal(off, plain)


@pytest.mark.parametrize("kind", FAMILIES)
def test_full_mask_unit_scales_equals_neos_result(neo, kind):
    plain, _ = _run(neo, kind)
    out, processed = _run(neo, kind, degu=FULL)
    _no_errors(processed)
    assert torch.allclose(out, plain, atol=1e-5)


@pytest.mark.parametrize("kind", FAMILIES)
def test_balance_minus_one_equals_plain_cfg_on_the_generic_prompt(neo, kind):
    """Guided families (SD1.5, Chroma, Qwen-Image, Lumina 2, Anima, Wan) by the CFG formula, Flux and
    Z-Image-Turbo and an SVDQ Flux (CFG 1) by the no-uncond one, Wan's 5-D latents with the mask broadcast over frames:
    M = 0 leaves the generic prompt's result."""
    generic, _ = _run(neo, kind, prompt=GENERIC_PROMPT)
    out, processed = _run(neo, kind, degu={**ON, "balance": -1.0, "mask_source": "difference"})
    _no_errors(processed)
    assert out.shape == generic.shape
    assert torch.allclose(out, generic, atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "mask", "extra"),
    [
        ("sd15", "attention", {}),
        ("flux", "attention", {}),
        ("flux_svdq", "difference", {}),
        ("chroma", "attention", {}),
        ("zimage", "attention", {}),
        ("qwen", "attention", {}),
        ("lumina", "attention", {}),
        ("anima", "difference", {}),
        ("wan", "difference", {"batch_size": 2}),
    ],
)
def test_each_family_is_guided_with_the_mask_it_can_have(neo, kind, mask, extra):
    """Attention where the subject's keys and the attention can be read (Flux's keys through Neo's
    tokenize_with_weights, Chroma through the flux blocks it is built from, Qwen-Image / Z-Image /
    Lumina 2 through their chat-template tokens and their own kernels); elsewhere the difference mask
    and one note naming the model, never an error."""
    plain, _ = _run(neo, kind, **extra)
    out, processed = _run(neo, kind, degu={**ON, "context_scale": 2.0, "identity_scale": 0.5}, **extra)
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == mask
    notes = [c for c in processed.p.comments if "attention mask unavailable" in c]
    if mask == "attention":
        assert not notes
    else:  # the note names the network DeGu cannot read
        name = "SVDQFluxTransformer2DModel" if kind == "flux_svdq" else "TinyJointDiT"
        assert len(notes) == 1 and name in notes[0]
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, plain, atol=1e-4)


@pytest.mark.parametrize("kind", ["qwen", "zimage", "lumina"])
def test_chat_template_families_locate_the_subjects_key(neo, kind):
    """The subject's key in the conditioning the network sees: Qwen-Image crops its template up to the
    user turn ("a photo of sks": 3), Z-Image keeps ``<|im_start|>user\\n`` before it (6), Lumina 2 has
    a start token, the system prompt and a newline before it."""
    from backend.text_processing._comfy import ChatTokenizer
    from backend.text_processing.gemma_engine import DEFAULT_POSITIVE
    from modules import shared

    harness.make_host(kind)
    system = len(ChatTokenizer()([DEFAULT_POSITIVE])["input_ids"][0])
    expected = {"qwen": 3, "zimage": 6, "lumina": 1 + system + 1 + 3}[kind]
    assert neo.adapter._subject_keys(shared.sd_model, PROMPT, GENERIC_PROMPT, "sks") == [expected]
    keys = neo.adapter._text_keys(shared.sd_model)[0]
    _, count = keys(PROMPT)
    assert shared.sd_model.get_learned_conditioning([PROMPT]).shape[1] == count  # the same key sequence


def test_wan_video_latents_are_guided_per_frame(neo, monkeypatch):
    from lib_degu import guidance

    shapes = []
    broadcast = guidance.broadcast_mask
    record = lambda m, like: shapes.append((m.shape, like.shape)) or broadcast(m, like)  # noqa: E731
    monkeypatch.setattr(guidance, "broadcast_mask", record)
    host = harness.make_host("wan")
    out, _ = _run(neo, host=host, degu={**ON, "context_scale": 2.0})
    assert out.dim() == 5 and out.shape[2] == host.sd_model.latent_frames
    assert shapes and all(m == (1, 1, *like[-2:]) and len(like) == 5 for m, like in shapes)  # one (H, W) mask


def test_a_neo_sampler_post_cfg_option_still_applies_on_top_of_degu(neo):
    """Euler CFG++ puts its post-CFG function and disable_cfg1_optimization into the options it passes
    to CFGDenoiser.forward; Neo joins them after the patcher's. DeGu's result must still reach them."""
    cfgpp = {"sampler_name": "Euler CFG++", "cfg_scale": 1.5}
    plain, _ = _run(neo, **cfgpp)
    euler, _ = _run(neo, cfg_scale=1.5)
    assert not torch.allclose(plain, euler, atol=1e-3)  # the CFG++ post-CFG function matters
    full, processed = _run(neo, degu=FULL, **cfgpp)
    _no_errors(processed)
    assert torch.allclose(full, plain, atol=1e-5)
    generic, _ = _run(neo, prompt=GENERIC_PROMPT, **cfgpp)
    out, _ = _run(neo, degu={**ON, "balance": -1.0, "mask_source": "difference"}, **cfgpp)
    assert torch.allclose(out, generic, atol=1e-4)


def test_nothing_left_on_the_shared_patcher(neo):
    """Deep compare of the shared UnetPatcher's model_options (and the network's hooks) after plain and
    DeGu runs: every DeGu hook lived on a clone."""
    from backend import utils

    for kind in ("sd15", "flux"):
        host = harness.make_host(kind)
        plain, _ = _run(neo, host=host)
        before = utils.deepcopy_(host.unet.model_options)
        model = host.unet.model.diffusion_model
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        _run(neo, host=host, degu={**ON, "mask_source": "attention"})
        _run(neo, host=host, degu=ON, enable_hr=True, hr_scale=2.0, hr_cfg=5.0)
        _run(neo, host=host, degu=ON, sampler_name="Euler CFG++")
        assert _same(host.unet.model_options, before)
        assert torch.equal(_run(neo, host=host)[0], plain)  # and the next generation without DeGu is as before
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks


def test_generic_rows_take_the_generic_prompts_extra_tensor_conds(neo):
    """Neo's compile_conditions turns every other tensor of a dict cond (token ids, masks) into a model
    cond: DeGu's generic entry must carry the generic prompt's, not the prompt's."""
    from backend.sampling.condition import compile_conditions
    from modules.prompt_parser import DictWithShape

    from lib_degu.hosts import forge as adapter

    prompt = {"crossattn": torch.zeros(1, 4, 8), "vector": torch.zeros(1, 2), "token_ids": torch.ones(1, 4)}
    entry = compile_conditions(prompt)[0]
    assert "token_ids" in entry["model_conds"]
    generic = DictWithShape(
        {"crossattn": torch.ones(1, 4, 8), "vector": torch.ones(1, 2), "token_ids": torch.zeros(1, 4)}
    )
    generic_entry = adapter._generic_entry(entry, generic)
    assert torch.equal(generic_entry["model_conds"]["token_ids"].cond, generic["token_ids"])
    assert torch.equal(generic_entry["model_conds"]["c_crossattn"].cond, generic["crossattn"])
    assert torch.equal(entry["model_conds"]["token_ids"].cond, prompt["token_ids"])  # the prompt's entry is untouched


def _kontext_host():
    """Neo's Flux Kontext: reference-image tokens appended after the image's (out[:, :img_tokens])."""
    import torch.nn.functional as F

    host = harness.make_host("flux")
    network = host.unet.model.diffusion_model
    inner = network.inner_forward

    def with_reference(img, img_ids, *args, **kwargs):
        tokens = img.shape[1]
        img = torch.cat([img, F.pad(img[:, :3], (0, 0))], dim=1)
        img_ids = torch.cat([img_ids, img_ids[:, :3] + 100], dim=1)
        return inner(img, img_ids, *args, **kwargs)[:, :tokens]

    network.inner_forward = with_reference
    return host


def test_kontext_reference_tokens_are_keys_and_the_image_tokens_are_read(neo):
    """Tokens after the image's are attended to but are not the image: the map folds the image's own
    tokens, so Kontext keeps the attention mask (it fell back to the difference mask before)."""
    settings = {**ON, "identity_scale": 0.5}
    out, processed = _run(neo, host=_kontext_host(), degu=settings)
    difference, _ = _run(neo, host=_kontext_host(), degu={**settings, "mask_source": "difference"})
    _no_errors(processed)
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
    assert not [c for c in processed.p.comments if "attention mask unavailable" in c]
    assert torch.isfinite(out).all() and not torch.allclose(out, difference, atol=1e-4)


def test_a_call_whose_joint_attention_cannot_be_read_falls_back_to_the_difference_mask(neo, monkeypatch):
    """Whatever fails inside the capture's model call: DeGu says so once, makes the call again without
    it and goes on with the difference mask."""
    from lib_degu import attention

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected layout")

    monkeypatch.setattr(attention.JointAttentionCapture, "_measure", broken)
    settings = {**ON, "identity_scale": 0.5}
    out, processed = _run(neo, "qwen", degu=settings)
    difference, _ = _run(neo, "qwen", degu={**settings, "mask_source": "difference"})
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"
    assert len([c for c in processed.p.comments if "attention could not be read" in c]) == 1
    assert torch.allclose(out, difference, atol=1e-6)


def test_a_capture_that_never_reads_a_map_says_so(neo, monkeypatch):
    """A kernel the network never calls (the capture armed, no map): not a silent difference mask."""
    from lib_degu import attention

    monkeypatch.setattr(attention.JointAttentionCapture, "_measure", lambda *args, **kwargs: None)
    _, processed = _run(neo, "lumina", degu=ON)
    assert processed.p.extra_generation_params["DeGu mask used"] == "difference"
    assert len([c for c in processed.p.comments if "no attention map was read" in c]) == 1


def test_a_sampler_wrapper_that_replaces_degus_falls_back_to_a_separate_generic_call(neo, monkeypatch, capsys):
    """join_dicts lets a single-slot option from the sampler (here a model_function_wrapper) replace the
    patcher's: DeGu never sees its rows, runs the generic prompt on its own and says so once."""
    from modules import sd_samplers, sd_samplers_common, sd_samplers_kdiffusion

    def sample_with_wrapper(model, x, sigmas, extra_args=None, callback=None, disable=None):
        def plain(apply_model, args):
            return apply_model(args["input"], args["timestep"], **args["c"])

        extra_args = {**(extra_args or {}), "model_options": {"model_function_wrapper": plain}}
        return sd_samplers_kdiffusion.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback)

    data = sd_samplers_common.SamplerData(
        "Euler (wrapper)", lambda model: sd_samplers_kdiffusion.KDiffusionSampler(sample_with_wrapper, model), [], {}
    )
    monkeypatch.setitem(sd_samplers.all_samplers_map, data.name, data)
    generic, _ = _run(neo, prompt=GENERIC_PROMPT, sampler_name=data.name)
    euler, _ = _run(neo, prompt=GENERIC_PROMPT)
    assert torch.allclose(generic, euler, atol=1e-5)  # the wrapper itself changes nothing
    out, processed = _run(neo, degu={**ON, "balance": -1.0, "mask_source": "difference"}, sampler_name=data.name)
    _no_errors(processed)
    assert torch.allclose(out, generic, atol=1e-4)
    assert capsys.readouterr().out.count("could not join the batch") == 1


# -- Neo's built-in guidance options on top of DeGu (docs/forge_neo.md, "Built-in guidance options") --------
EPS_SCALING, MAHIRO_SCALE, RESCALE = 1.02, 7.0, 0.7
DEGU_GENERIC = {**ON, "balance": -1.0, "mask_source": "difference"}  # M = 0: DeGu's combination is CFG on g


def _option(name):
    """Neo's option ``name`` switched on the way Neo does it: Epsilon Scaling through the setting that
    ``apply_token_merging`` reads, MaHiRo and RescaleCFG as the built-in processing scripts."""
    if name == "epsilon scaling":
        return {"override_settings": {"scaling_factor": EPS_SCALING}}, []
    from modules.processing_scripts.mahiro import ScriptMahiro
    from modules.processing_scripts.rescale_cfg import ScriptRescaleCFG

    script = (ScriptMahiro(), (True,)) if name == "MaHiRo" else (ScriptRescaleCFG(), (RESCALE,))
    return {}, [script]


def _expected(name, x, sigma, s, cond, uncond, combined):
    """The option's own formula (ComfyUI's nodes_eps / nodes_mahiro / RescaleCFG) applied to ``combined``
    as the guided prediction, with the host's cond and uncond predictions."""
    if name == "epsilon scaling":
        return x - (x - combined) / EPS_SCALING
    if name == "MaHiRo":
        leap, u_leap = cond * s, uncond * s
        merge = (leap + combined) / 2
        normu = torch.sqrt(u_leap.abs()) * u_leap.sign()
        normm = torch.sqrt(merge.abs()) * merge.sign()
        simsc = 2 * (torch.nn.functional.cosine_similarity(normu, normm).mean() + 1)
        return (simsc * combined + (4 - simsc) * leap) / 4
    sigma = sigma.view(-1, 1, 1, 1)
    k = (sigma**2 + 1.0) ** 0.5
    scaled = x / (sigma**2 + 1.0)
    cond_v = (scaled - cond) * k / sigma  # RescaleCFG's space: (x/(sigma^2+1) - denoised) * k / sigma
    cfg_v = (scaled - combined) * k / sigma
    ratio = cond_v.std(dim=(1, 2, 3), keepdim=True) / cfg_v.std(dim=(1, 2, 3), keepdim=True)
    final = RESCALE * cfg_v * ratio + (1.0 - RESCALE) * cfg_v
    return scaled - final * sigma / k


def _rows(neo, prompt):
    """One Euler step of the plain host (its result is the step's guided prediction), with what its CFG
    step had: the input, sigma, the scale and the cond/uncond predictions (a post-CFG function that
    changes nothing records them)."""
    from modules import scripts

    seen = {}

    class Recorder(scripts.Script):
        def title(self):
            return "recorder"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            def record(args):
                seen.update(x=args["input"], sigma=args["sigma"], s=args["cond_scale"])
                seen.update(cond=args["cond_denoised"], uncond=args["uncond_denoised"])
                return args["denoised"]

            unet = p.sd_model.forge_objects.unet.clone()
            unet.set_model_sampler_post_cfg_function(record)
            p.sd_model.forge_objects.unet = unet

    host = harness.make_host("sd15")
    out = torch.stack(list(host.run(host.processing(prompt=prompt, steps=1), Recorder()).images))
    assert torch.allclose(out, seen["uncond"] + seen["s"] * (seen["cond"] - seen["uncond"]), atol=1e-5)
    return seen


@pytest.mark.parametrize("name", ["epsilon scaling", "MaHiRo", "RescaleCFG"])
def test_neos_built_in_guidance_option_applies_on_top_of_degu(neo, name):
    """Epsilon Scaling (modules/sd_models.py: apply_token_merging, before process_before_every_sampling:
    a post-CFG function already on the patcher DeGu clones), MaHiRo (a built-in script's post-CFG
    function, appended after DeGu's) and RescaleCFG (a built-in script's single-slot cfg function, set
    after DeGu's hooks) each apply to DeGu's combination: the result is the option's formula with DeGu's
    combination as the guided prediction and the host's own cond/uncond predictions."""
    from backend import utils

    settings, scripts = _option(name)
    host = harness.make_host("sd15")
    before = utils.deepcopy_(host.unet.model_options)
    plain = _run(neo, host=host, steps=1)[0]
    with_option = _run(neo, host=host, steps=1, host_scripts=scripts, **settings)[0]
    rows, generic = _rows(neo, PROMPT), _rows(neo, GENERIC_PROMPT)
    x, sigma, s, cond, uncond = (rows[k] for k in ("x", "sigma", "s", "cond", "uncond"))
    assert torch.allclose(plain, uncond + s * (cond - uncond), atol=1e-5)
    assert torch.allclose(with_option, _expected(name, x, sigma, s, cond, uncond, plain), atol=1e-5)
    assert not torch.allclose(with_option, plain, atol=1e-3)  # the option matters

    off = _run(neo, host=host, steps=1, host_scripts=scripts, degu={"enabled": False, "subject": "sks"}, **settings)[0]
    assert torch.equal(off, with_option)  # DeGu off: the host with the option, bit for bit

    out, processed = _run(neo, host=host, steps=1, host_scripts=scripts, degu=DEGU_GENERIC, **settings)
    _no_errors(processed)
    combined = uncond + s * (generic["cond"] - uncond)  # DeGu's own combination at M = 0
    assert not torch.allclose(combined, plain, atol=1e-3)
    assert torch.allclose(out, _expected(name, x, sigma, s, cond, uncond, combined), atol=1e-4)

    assert _same(host.unet.model_options, before)  # nothing left on the shared patcher
    assert torch.equal(_run(neo, host=host, steps=1)[0], plain)


@pytest.mark.parametrize("kind", FAMILIES)
def test_the_layout_pass_samples_twice_and_its_second_pass_guides_with_the_layout(neo, kind):
    """Every Neo family: at balance +1 the layout pass's image is Neo's own (the second pass starts
    from the first's noise), and at the defaults it ran as a layout pass wherever the family has an
    attention map (Wan's video latents included)."""
    plain, _ = _run(neo, kind)
    out, processed = _run(neo, kind, degu={**ON, "layout_pass": True, "balance": 1.0})
    _no_errors(processed)
    assert torch.allclose(out, plain, atol=1e-5)
    _, processed = _run(neo, kind, degu={**ON, "layout_pass": True})
    _no_errors(processed)
    used = processed.p.extra_generation_params["DeGu mask used"]
    if "attention" in used:
        assert used == "attention, layout"
    else:
        assert any("layout pass needs the attention mask" in c for c in processed.p.comments)
