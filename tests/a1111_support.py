"""Shared set-up for tests that run the DeGu script inside the simulated A1111 host."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import torch

from lib_degu.settings import DeGuSettings
from tests.fake_a1111 import harness

SCRIPT_PATH = Path(__file__).resolve().parent.parent / "scripts" / "degu.py"

with harness.installed():
    from modules import script_callbacks, shared  # noqa: F401  (re-exported for the tests)

    _spec = importlib.util.spec_from_file_location("degu.py", SCRIPT_PATH)
    degu_script = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(degu_script)
    from lib_degu.hosts import a1111 as adapter  # noqa: F401


def script_args(**settings) -> list:
    s = DeGuSettings(**settings)
    return [getattr(s, name) for name in DeGuSettings.names()]


def make_script():
    script = degu_script.DeGuScript()
    script.args_from, script.args_to = 0, len(DeGuSettings.names())
    return script


def run(degu: dict | None = None, **kwargs) -> harness.FakeProcessed:
    """One txt2img through the fake host; ``degu=None`` runs without the extension's script."""
    kwargs.setdefault("prompt", "a photo of sks dog on a beach")
    kwargs.setdefault("negative_prompt", "blurry")
    kwargs.setdefault("steps", 4)
    kwargs.setdefault("seed", 3)
    if degu is not None:
        kwargs["scripts"] = [make_script()]
        kwargs["script_args"] = script_args(**degu)
    p = harness.FakeProcessing(**kwargs)
    processed = harness.txt2img(p)
    processed.p = p
    return processed


def unet_hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextlib.contextmanager
def rows_per_call(unet: torch.nn.Module, record: Any = lambda sample: sample.shape[0]):
    """Inside the block, ``record(sample)`` of every UNet call (by default its batch size), the input
    given positionally (A1111) or as ``sample=`` (Forge); the pre-hook is removed on the way out."""
    calls: list = []
    handle = unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(record(args[0] if args else kwargs["sample"])), with_kwargs=True
    )
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def created_samplers():
    """Records every sampler object the host creates (one per pass), so a test can inspect a pass's
    own sampler and CFGDenoiser after ``closing(p)`` has dropped ``p.sampler``."""
    with harness.installed():
        from modules import sd_samplers

    made: list = []
    original = sd_samplers.create_sampler

    def create_sampler(name, model):
        made.append(original(name, model))
        return made[-1]

    sd_samplers.create_sampler = create_sampler
    try:
        yield made
    finally:
        sd_samplers.create_sampler = original


def assert_sampler_clean(sampler) -> None:
    """No DeGu patch left on a pass's own sampler or its CFGDenoiser (instance attributes only)."""
    denoiser = sampler.model_wrap_cfg
    assert "launch_sampling" not in vars(sampler)
    assert "combine_denoised" not in vars(denoiser)
    assert not hasattr(denoiser, adapter.PASS_ATTR)
