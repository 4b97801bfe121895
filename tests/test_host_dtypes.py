"""DeGu in both simulated hosts running their diffusion model in bfloat16, as the real hosts do on GPUs.

- A1111 1.10.1 keeps float32 weights in the fake and runs conds and sampling under CPU autocast
  (``harness.AUTOCAST_DTYPE``; processing.py wraps ``p.sample`` in ``devices.autocast()``). The model's
  output is bf16; the k-diffusion wrapper turns it into a float32 x0, while the timestep samplers'
  eps stays bf16, so DDIM's CFG result is bf16 there.
- Forge (dfdcbab6) has no autocast (``devices.autocast()`` is a null context): the diffusion model is
  stored and computed in bf16 (``make_host(dtype=...)``) and ``KModel.apply_model`` returns float32.

In each, DeGu must hand back the host's dtype at every step, run its extra rows in the model's dtype,
and keep the identities (full mask at scales 1 = the host; balance -1 = plain CFG on the generic
prompt) to within bf16 rounding: less than the host's own bf16 error against float32, and less than the
distance between the prompt's and the generic prompt's images.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.a1111_support import SCRIPT_PATH, script_args

ON = {"enabled": True, "subject": "sks", "generic": "a"}
FULL = {**ON, "mask_source": "full"}
GENERIC = {**ON, "mask_source": "difference", "balance": -1.0}
GUIDED = {**ON, "context_scale": 1.5}  # the attention mask, read from bf16 queries and keys
PROMPT, GENERIC_PROMPT = "a photo of sks dog on a beach", "a photo of a dog on a beach"


def assert_bf16_close(
    result: torch.Tensor, expected: torch.Tensor, host_bf16_error: torch.Tensor, wrong: torch.Tensor | None = None
) -> None:
    """``result`` equals ``expected`` to within bf16 rounding: DeGu's deviation (mean and largest) stays
    within half the host's own bf16 error, ``host_bf16_error`` = |host in bf16 - host in float32|, and
    (given ``wrong``, the result of a wrong identity) within a tenth of that result's distance."""
    error = (result - expected).abs()
    bound = 0.5 * float(host_bf16_error.mean())
    if wrong is not None:
        bound = min(bound, 0.1 * float((wrong - expected).abs().mean()))
    assert float(error.mean()) <= bound, (float(error.mean()), bound)
    assert float(error.max()) <= float(host_bf16_error.max()), (float(error.max()), host_bf16_error.max())


# -- A1111 ----------------------------------------------------------------------------------------------
@pytest.fixture
def a1111(monkeypatch):
    from tests.fake_a1111 import harness

    with harness.host_session(seed=0) as model:
        monkeypatch.setattr(harness, "AUTOCAST_DTYPE", torch.bfloat16)
        yield model


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_a1111_under_bf16_autocast_keeps_the_hosts_dtype_and_identities(a1111, sampler, monkeypatch):
    from modules import script_callbacks

    from tests.a1111_support import run
    from tests.fake_a1111 import harness

    unet = a1111.model.diffusion_model
    seen: dict[str, set] = {}
    record = {"key": None}

    def note(kind: str, dtype: torch.dtype) -> None:
        seen.setdefault(record["key"], set()).add((kind, dtype))

    handle = unet.register_forward_hook(lambda m, args, output: note("unet", output.sample.dtype))
    script_callbacks.on_cfg_denoised(lambda params: note("rows", params.x.dtype))
    script_callbacks.on_cfg_after_cfg(lambda params: note("cfg", params.x.dtype))
    try:

        def generate(key: str, degu: dict | None, prompt: str = PROMPT):
            record["key"] = key
            return run(degu, sampler_name=sampler, prompt=prompt)

        monkeypatch.setattr(harness, "AUTOCAST_DTYPE", None)
        plain_float32 = generate("float32", None).latents
        monkeypatch.setattr(harness, "AUTOCAST_DTYPE", torch.bfloat16)
        plain = generate("plain", None).latents
        full = generate("full", FULL)
        generic_plain = generate("generic plain", None, prompt=GENERIC_PROMPT).latents
        generic = generate("generic", GENERIC)
        guided = generate("guided", GUIDED)
    finally:
        handle.remove()
        script_callbacks.remove_callbacks_for_function(note)
    host_dtypes = seen["plain"]
    assert ("unet", torch.bfloat16) in host_dtypes  # the UNet did run under bf16 autocast
    assert ("cfg", torch.bfloat16 if sampler == "DDIM" else torch.float32) in host_dtypes
    for key in ("full", "generic", "guided"):
        assert seen[key] == host_dtypes, key  # DeGu's rows and its CFG result: the host's dtypes
    for processed in (full, generic, guided):
        assert not [c for c in processed.p.comments if "error" in c.lower() or "could not" in c.lower()]
    assert guided.p.extra_generation_params["DeGu mask used"] == "attention"
    assert torch.isfinite(guided.latents).all() and not torch.equal(guided.latents, plain)
    assert seen["float32"] == {("unet", torch.float32), ("rows", torch.float32), ("cfg", torch.float32)}
    host_bf16_error = (plain - plain_float32).abs()
    assert_bf16_close(full.latents, plain, host_bf16_error)
    assert_bf16_close(generic.latents, generic_plain, host_bf16_error)
    # A wrong identity (the generic prompt's image for the prompt's) lies outside that tolerance.
    with pytest.raises(AssertionError):
        assert_bf16_close(generic_plain, plain, host_bf16_error)


# -- Forge ----------------------------------------------------------------------------------------------
@pytest.fixture
def forge():
    from tests.fake_forge import harness

    harness.install(also_purge=("lib_degu.hosts.forge", "degu_forge_script"))
    try:
        spec = importlib.util.spec_from_file_location("degu_forge_script", SCRIPT_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield harness, module
    finally:
        harness.uninstall()


def _dtype_recorder(seen: set):
    """A script whose post-CFG function runs after DeGu's and records the dtype DeGu hands on."""
    from modules import scripts

    class Recorder(scripts.Script):
        def title(self):
            return "dtype recorder"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()

            def post_cfg(args):
                seen.add(("denoised", args["denoised"].dtype))
                seen.add(("cond", args["cond_denoised"].dtype))
                return args["denoised"]

            unet.set_model_sampler_post_cfg_function(post_cfg)
            p.sd_model.forge_objects.unet = unet

    return Recorder()


@pytest.mark.parametrize(
    ("kind", "sampler"), [("sd15", "Euler"), ("sd15", "DDIM"), ("sdxl", "Euler"), ("flux", "Euler")]
)
def test_forge_bf16_model_keeps_the_hosts_dtype_and_identities(forge, kind, sampler):
    harness, script = forge
    seen: dict[str, set] = {}

    def generate(key: str, degu: dict | None, prompt: str = PROMPT, dtype: torch.dtype = torch.bfloat16):
        host = harness.make_host(kind, dtype=dtype)
        model = host.unet.model.diffusion_model
        assert next(model.parameters()).dtype == dtype
        seen[key] = set()
        handle = model.register_forward_pre_hook(
            lambda m, args, kwargs: seen[key].add(("input", (args[0] if args else kwargs["sample"]).dtype)),
            with_kwargs=True,
        )
        p = host.processing(prompt=prompt, sampler_name=sampler)
        scripts = [_dtype_recorder(seen[key])]
        if degu is not None:
            scripts.append((script.DeGuScript(), script_args(**degu)))
        try:
            processed = host.run(p, *scripts)
        finally:
            handle.remove()
        processed.p = p
        assert not [c for c in p.comments if "error" in c.lower() or "could not" in c.lower()]
        return torch.stack(list(processed.images)), processed

    plain_float32, _ = generate("float32", None, dtype=torch.float32)
    plain, _ = generate("plain", None)
    full, _ = generate("full", FULL)
    generic_plain, _ = generate("generic plain", None, prompt=GENERIC_PROMPT)
    generic, _ = generate("generic", GENERIC)
    guided, processed = generate("guided", GUIDED)
    assert seen["plain"] == {("input", torch.bfloat16), ("denoised", torch.float32), ("cond", torch.float32)}
    for key in ("full", "generic", "guided"):
        assert seen[key] == seen["plain"], key  # every model call in bf16; DeGu's result in the host's dtype
    assert processed.p.extra_generation_params["DeGu mask used"] == "attention"
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
    host_bf16_error = (plain - plain_float32).abs()
    assert float(host_bf16_error.max()) > 0  # the model did compute in bf16
    # The fake's rows are batch-invariant, so on Forge the identities also hold against the (on Flux
    # small) distance between the two prompts' images.
    assert_bf16_close(full, plain, host_bf16_error, wrong=generic_plain)
    assert_bf16_close(generic, generic_plain, host_bf16_error, wrong=plain)
    with pytest.raises(AssertionError):
        assert_bf16_close(generic_plain, plain, host_bf16_error, wrong=generic_plain)
