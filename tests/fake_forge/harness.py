"""Harness for the simulated Forge host (tests/fake_forge).

Typical use::

    from tests.fake_forge import harness

    harness.install()                      # fake_forge first on sys.path, host modules purged
    try:
        host = harness.make_host("sd15")   # or "flux"
        p = host.processing(prompt="a photo of a cat", steps=3)
        processed = host.run(p, my_script) # or harness.process_images(p)
    finally:
        harness.uninstall()

The host packages are imported only after ``install()`` (this module imports none of them at
import time). ``install``/``uninstall`` never touch another fake host's files: they only edit
``sys.path`` and swap the host packages' ``sys.modules`` entries (this fake's own module objects are
kept between installs, so module-level ``from modules import shared`` stays valid; ``make_host``
resets the per-generation globals).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

ROOT = str(Path(__file__).resolve().parent)
# top-level packages of any WebUI host (this fake's, the A1111 fake's, a real one's)
HOST_PACKAGES = ("modules", "backend", "modules_forge", "ldm", "sgm", "k_diffusion", "launch")

_own: dict[str, ModuleType] = {}  # modules imported while installed, kept for the next install
_foreign: dict[str, ModuleType] = {}  # what was there before install, given back by uninstall
_depth = 0
_prefixes: tuple[str, ...] = HOST_PACKAGES
_path_index: int | None = None
_saved_threads: int | None = None


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def install(also_purge: tuple[str, ...] = ()) -> None:
    """Make ``modules``/``backend`` resolve to this fake: put its directory first on ``sys.path`` and swap
    every host package (``HOST_PACKAGES``, plus ``also_purge`` -- e.g. an extension's host-bound
    modules) out of ``sys.modules``. Modules imported while installed are kept and come back on the next
    install, so ``from modules import shared`` done once stays valid. Calls nest."""
    global _depth, _prefixes, _path_index, _saved_threads
    _depth += 1
    if _depth > 1:
        return
    _prefixes = HOST_PACKAGES + tuple(also_purge)
    _foreign.clear()
    for name in [name for name in sys.modules if _matches(name, _prefixes)]:
        module = sys.modules.pop(name)
        if _own.get(name) is not module:
            _foreign[name] = module
    sys.modules.update({name: module for name, module in _own.items() if _matches(name, _prefixes)})
    _path_index = sys.path.index(ROOT) if ROOT in sys.path else None
    while ROOT in sys.path:
        sys.path.remove(ROOT)
    sys.path.insert(0, ROOT)
    importlib.invalidate_caches()
    _saved_threads = torch.get_num_threads()
    # one intra-op thread while installed: the tiny models gain nothing from more, and OpenMP
    # spin-waiting on a busy machine made them ~50x slower (restored by uninstall)
    torch.set_num_threads(1)


def uninstall() -> None:
    """Undo ``install``: stash the modules imported from (or bound to) the fake, give back the removed
    ones and restore ``sys.path`` (entries other code added meanwhile are kept)."""
    global _depth, _path_index, _saved_threads
    if _depth == 0:
        return
    _depth -= 1
    if _depth > 0:
        return
    for name in [name for name in sys.modules if _matches(name, _prefixes)]:
        module = sys.modules.pop(name)
        if _foreign.get(name) is not module:
            _own[name] = module
    sys.modules.update(_foreign)
    _foreign.clear()
    while ROOT in sys.path:
        sys.path.remove(ROOT)
    if _path_index is not None:
        sys.path.insert(min(_path_index, len(sys.path)), ROOT)
    _path_index = None
    importlib.invalidate_caches()
    if _saved_threads is not None:
        torch.set_num_threads(_saved_threads)
        _saved_threads = None


def is_installed() -> bool:
    return _depth > 0


def forget_modules() -> None:
    """Drop the kept modules (the next install imports the fake afresh). Only while uninstalled."""
    if _depth:
        raise RuntimeError("uninstall() first")
    _own.clear()


@contextlib.contextmanager
def installed(also_purge: tuple[str, ...] = ()) -> Iterator[ModuleType]:
    """``with harness.installed(): ...`` -- install for the block, uninstall afterwards (nests)."""
    install(also_purge)
    try:
        yield sys.modules[__name__]
    finally:
        uninstall()


def _require_installed() -> None:
    if not _depth:
        raise RuntimeError("call tests.fake_forge.harness.install() first")


def _sibling(name: str) -> ModuleType:
    """Import tests/<name>.py or tests/fake_forge/<name>.py whether or not ``tests`` is a package here."""
    package = __package__ or ""
    candidates = []
    if package:
        candidates += [f"{package}.{name}", f"{package.rpartition('.')[0]}.{name}" if "." in package else None]
    for candidate in filter(None, candidates):
        try:
            return importlib.import_module(candidate)
        except ImportError:
            continue
    for folder in (Path(ROOT), Path(ROOT).parent):
        path = folder / f"{name}.py"
        if path.exists():
            key = f"_fake_forge_{name}"
            if key not in sys.modules:
                spec = importlib.util.spec_from_file_location(key, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                spec.loader.exec_module(module)
            return sys.modules[key]
    raise ImportError(name)


def reset_host_state() -> None:
    """Fresh per-host globals: state, option values, reported errors, class-level cond caches, loaded
    patchers, the memory knobs. (Registered script callbacks are left alone.)"""
    _require_installed()
    from backend import memory_management
    from backend.sampling import sampling_function
    from modules import errors, processing, sd_models, shared

    memory_management.unload_all_models()
    shared.state.reset()
    shared.opts.data.clear()
    errors.reported.clear()
    processing.StableDiffusionProcessing.cached_c = [None, None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None, None]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None, None]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None, None]
    sampling_function.FREE_MEMORY = float("inf")
    sampling_function.LAST_MEMORY_REQUEST = None
    sampling_function.LAST_MEMORY_ESTIMATE = None
    sd_models.model_data.__init__()  # no checkpoint selected, no model kept from an earlier host


@dataclass
class Host:
    kind: str
    sd_model: Any

    @property
    def unet(self) -> Any:
        """The original UnetPatcher every pass starts from."""
        return self.sd_model.forge_objects_original.unet

    @property
    def latent_channels(self) -> int:
        return self.sd_model.forge_objects.vae.latent_channels

    def processing(self, **kwargs: Any) -> Any:
        """A txt2img ``p`` with small defaults (64x64 px = 8x8 latent, 3 Euler steps, seed 0)."""
        if self.kind == "flux":
            kwargs = {"cfg_scale": 1.0, "scheduler": "Simple", **kwargs}
        elif self.kind.startswith("sd35"):
            kwargs = {"scheduler": "Simple", **kwargs}
        return make_processing(**kwargs)

    def img2img(self, init_latent: Any, **kwargs: Any) -> Any:
        from modules.processing import StableDiffusionProcessingImg2Img

        if self.kind == "flux":
            kwargs = {"cfg_scale": 1.0, "scheduler": "Simple", **kwargs}
        size = {"width": init_latent.shape[-1] * 8, "height": init_latent.shape[-2] * 8}
        return StableDiffusionProcessingImg2Img(init_latent=init_latent, **{**_DEFAULTS, **size, **kwargs})

    def run(self, p: Any, *scripts: Any) -> Any:
        if scripts:
            attach_scripts(p, *scripts)
        return process_images(p)


_DEFAULTS: dict[str, Any] = dict(
    prompt="a photo of a cat",
    negative_prompt="",
    steps=3,
    cfg_scale=7.0,
    width=64,
    height=64,
    seed=0,
    sampler_name="Euler",
    batch_size=1,
)


def make_host(kind: str = "sd15", seed: int = 0, inpainting: bool = False, dtype: torch.dtype = torch.float32) -> Host:
    """Build a tiny ``sd_model`` ("sd15": diffusers tiny UNet + CLIP-like engine; "sdxl": the same UNet
    with a projected class embedding for ``y`` + CLIP-L/G-like engines, dict conds; with ``inpainting``
    either gets a 9-channel inpainting UNet; "flux": tiny Flux DiT + CLIP-L/T5-like engines, distilled
    guidance; "sd35" / "sd35-large": tiny SD3.5-medium / -large MMDiT-X (``backend/nn/mmditx.py``) + CLIP-L/G
    and T5-like engines) and install it as ``shared.sd_model``.

    ``dtype`` (e.g. torch.bfloat16): the diffusion model's storage and computation dtype, as Forge's
    loader sets them on a GPU (backend/loader.py); ``KModel.apply_model`` casts the inputs to it and
    the output back to float32. Forge's ``devices.autocast()`` is a no-op: no autocast is involved."""
    _require_installed()
    from modules import sd_models, shared
    from modules.sd_models import CheckpointInfo

    reset_host_state()
    sd_model = _build_model(kind, seed, inpainting, dtype)
    info = CheckpointInfo(f"tiny-{kind}-{seed}")
    sd_model.sd_checkpoint_info = info
    sd_model.filename = info.filename
    sd_model.sd_model_hash = info.calculate_shorthash()
    sd_model.extra_generation_params = {}
    sd_model.comments = []
    shared.sd_model = sd_model
    sd_models.model_data.sd_model = sd_model
    sd_models.model_data.harness_models[info.name] = sd_model
    sd_models.model_data.forge_loading_parameters = {"checkpoint_info": info}
    return Host(kind, sd_model)


def checkpoint(name: str, kind: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ``CheckpointInfo`` whose model (built by ``forge_model_reload`` when it is loaded, e.g. as the
    refiner: ``p.refiner_checkpoint_info = harness.checkpoint("refiner", seed=7)``) is a new tiny
    ``kind`` model from ``seed``."""
    _require_installed()
    from modules.sd_models import CheckpointInfo

    return CheckpointInfo(name, loader=lambda: _build_model(kind, seed, False, dtype))


def _build_model(kind: str, seed: int, inpainting: bool, dtype: torch.dtype) -> Any:
    from backend.diffusion_engine.flux import Flux
    from backend.diffusion_engine.sd15 import StableDiffusion

    tiny_text = _sibling("tiny_text")
    invariant = _sibling("batch_invariance").make_batch_invariant
    if kind == "sd15":
        from diffusers import DDPMScheduler

        components = {
            "unet": invariant(_sibling("tiny_models").tiny_unet(seed, 9 if inpainting else 4)),
            "scheduler": DDPMScheduler(
                num_train_timesteps=1000,
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                prediction_type="epsilon",
            ),
            "text_encoder": invariant(tiny_text.TinyCLIPTextModel(width=32, seed=seed + 1)),
            "tokenizer": tiny_text.FakeCLIPTokenizer(),
        }
        config = SimpleNamespace(huggingface_repo="runwayml/stable-diffusion-v1-5", inpaint_model=lambda: inpainting)
        sd_model = StableDiffusion(config, components)
    elif kind == "sdxl":
        from backend.diffusion_engine.sdxl import SIZE_FEATURES, StableDiffusionXL
        from diffusers import DDPMScheduler

        vector = 16 + 6 * SIZE_FEATURES  # pooled CLIP-G + the embedded size and crop
        unet = _sibling("tiny_models").tiny_unet(
            seed, 9 if inpainting else 4, class_embed_type="projection", projection_class_embeddings_input_dim=vector
        )
        components = {
            "unet": invariant(unet),
            "scheduler": DDPMScheduler(
                num_train_timesteps=1000,
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                prediction_type="epsilon",
            ),
            "text_encoder": invariant(tiny_text.TinyCLIPTextModel(width=16, seed=seed + 1)),
            "tokenizer": tiny_text.FakeCLIPTokenizer(),
            "text_encoder_2": invariant(tiny_text.TinyCLIPTextModel(width=16, seed=seed + 3)),
            "tokenizer_2": tiny_text.FakeCLIPTokenizer(),
        }
        config = SimpleNamespace(
            huggingface_repo="stabilityai/stable-diffusion-xl-base-1.0", inpaint_model=lambda: inpainting
        )
        sd_model = StableDiffusionXL(config, components)
    elif kind == "flux":
        components = {
            "transformer": invariant(_sibling("tiny_flux").tiny_flux(seed)),
            "text_encoder": invariant(tiny_text.TinyCLIPTextModel(width=16, seed=seed + 1)),
            "tokenizer": tiny_text.FakeCLIPTokenizer(),
            "text_encoder_2": invariant(tiny_text.TinyT5Encoder(width=32, seed=seed + 2)),
            "tokenizer_2": tiny_text.FakeT5Tokenizer(),
        }
        config = SimpleNamespace(huggingface_repo="black-forest-labs/FLUX.1-dev", inpaint_model=lambda: False)
        sd_model = Flux(config, components)
    elif kind in ("sd35", "sd35-large"):
        from backend.diffusion_engine.sd35 import StableDiffusion3

        variant = "large" if kind == "sd35-large" else "medium"

        components = {
            "transformer": invariant(
                _sibling("tiny_models").tiny_sd35_mmditx(seed, variant=variant, context_dim=32, pooled_dim=32)
            ),
            "text_encoder": invariant(tiny_text.TinyCLIPTextModel(width=16, seed=seed + 1)),
            "tokenizer": tiny_text.FakeCLIPTokenizer(),
            "text_encoder_2": invariant(tiny_text.TinyCLIPTextModel(width=16, seed=seed + 3)),
            "tokenizer_2": tiny_text.FakeCLIPTokenizer(),
            "text_encoder_3": invariant(tiny_text.TinyT5Encoder(width=32, seed=seed + 2)),
            "tokenizer_3": tiny_text.FakeT5Tokenizer(),
        }
        config = SimpleNamespace(
            huggingface_repo=f"stabilityai/stable-diffusion-3.5-{variant}", inpaint_model=lambda: False
        )
        sd_model = StableDiffusion3(config, components)
    else:
        raise ValueError(f"unknown host kind {kind!r} (sd15, sdxl, flux, sd35 or sd35-large)")

    k_model = sd_model.forge_objects.unet.model
    k_model.diffusion_model.to(dtype)
    k_model.storage_dtype = k_model.computation_dtype = dtype
    return sd_model


def make_processing(**kwargs: Any) -> Any:
    """``StableDiffusionProcessingTxt2Img`` with the harness defaults, overridable by ``kwargs``."""
    _require_installed()
    from modules.processing import StableDiffusionProcessingTxt2Img

    return StableDiffusionProcessingTxt2Img(**{**_DEFAULTS, **kwargs})


def attach_scripts(p: Any, *scripts: Any) -> Any:
    """Make ``scripts`` (``Script`` objects, or ``(script, args)`` pairs) the AlwaysOn scripts of ``p``,
    in this order, with consecutive ``args_from``/``args_to``. Returns the ScriptRunner."""
    _require_installed()
    from modules.scripts import ScriptRunner

    all_args: list[Any] = []
    runner_scripts = []
    for item in scripts:
        script, args = item if isinstance(item, tuple) else (item, ())
        script.args_from = len(all_args)
        all_args += list(args)
        script.args_to = len(all_args)
        script.alwayson = True
        if script.filename is None:
            script.filename = getattr(sys.modules.get(type(script).__module__), "__file__", None) or "<test script>"
        runner_scripts.append(script)
    runner = ScriptRunner(runner_scripts)
    p.scripts = runner
    p.script_args = tuple(all_args)
    return runner


def process_images(p: Any) -> Any:
    _require_installed()
    from modules import processing

    return processing.process_images(p)


def __getattr__(name: str) -> Any:
    """``FakeProcessing`` / ``FakeProcessingImg2Img``: the host's processing classes (after install)."""
    if name in ("FakeProcessing", "FakeProcessingImg2Img"):
        _require_installed()
        from modules import processing

        return (
            processing.StableDiffusionProcessingTxt2Img
            if name == "FakeProcessing"
            else (processing.StableDiffusionProcessingImg2Img)
        )
    raise AttributeError(name)
