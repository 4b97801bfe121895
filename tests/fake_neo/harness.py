"""Harness for the simulated Forge Neo host (tests/fake_neo, an overlay of tests/fake_forge).

The same interface as tests/fake_forge/harness.py -- ``install()``/``uninstall()``/``installed()``,
``make_host(kind)``, ``Host.processing``/``run`` -- from a second instance of that module's code (its
own module caches, so the two simulated hosts never share module objects), with this folder first on
``sys.path``. Kinds: ``sd15`` and ``flux`` (the simulated Forge's models under Neo's backend: Neo's
T5 engine, batcher, patcher), and Neo's ``chroma``, ``zimage`` (Z-Image-Turbo, CFG 1), ``qwen``
(Qwen-Image), ``lumina`` (Lumina 2), ``anima``, ``wan`` (Wan 2.2, 5-D latents) and ``flux_svdq`` (Flux
dev with an SVDQ/Nunchaku network: the Flux engine, a network whose attention cannot be read).
``sd35`` is refused: Neo dropped SD3.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from tests.fake_forge import harness as forge_harness

ROOT = str(Path(__file__).resolve().parent)


def _second_instance() -> ModuleType:
    name = "tests.fake_neo._forge_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(forge_harness.__file__))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        module.ROOT = ROOT
        module._sibling = forge_harness._sibling  # tiny_text, tiny_models, batch_invariance live there
    return sys.modules[name]


_H = _second_instance()
is_installed = _H.is_installed
attach_scripts, process_images, make_processing = _H.attach_scripts, _H.process_images, _H.make_processing
_purged: tuple[str, ...] = ()


def _forget_parent_attributes(names: tuple[str, ...]) -> None:
    """``from lib_degu.hosts import forge`` takes the package's attribute before ``sys.modules``: drop an
    attribute that points at another simulated host's copy of the module (both hosts purge the same
    names, and the simulated Forge's harness does not touch parent attributes)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent) if parent else None
        if package is not None and getattr(package, child, None) is not sys.modules.get(name):
            with contextlib.suppress(AttributeError):
                delattr(package, child)


def install(also_purge: tuple[str, ...] = ()) -> None:
    """As the simulated Forge's ``install``, with this folder first on ``sys.path``."""
    global _purged
    _H.install(also_purge)
    _purged = tuple(also_purge)
    _forget_parent_attributes(_purged)


def uninstall() -> None:
    _H.uninstall()
    _forget_parent_attributes(_purged)


@contextlib.contextmanager
def installed(also_purge: tuple[str, ...] = ()) -> Iterator[ModuleType]:
    install(also_purge)
    try:
        yield sys.modules[__name__]
    finally:
        uninstall()

_CFG_ONE = {"zimage", "flux_svdq"}  # Z-Image-Turbo and Flux dev run at CFG 1 (no uncond)
_FLOW = {"flux", "flux_svdq", "chroma", "zimage", "qwen", "lumina", "anima", "wan"}


class Host(_H.Host):
    def processing(self, **kwargs: Any) -> Any:
        if self.kind in _FLOW:
            kwargs = {"scheduler": "Simple", **kwargs}
        if self.kind in _CFG_ONE:
            kwargs = {"cfg_scale": 1.0, **kwargs}
        return super().processing(**kwargs)

    def run(self, p: Any, *scripts: Any) -> Any:
        """Neo's ``load_scripts`` lists ``modules/processing_scripts`` (MaHiRo, RescaleCFG) after every
        extension's scripts (``list_scripts("scripts") + list_scripts("modules/processing_scripts")``),
        so their hooks run after the extensions' whatever order a test passes them in."""

        def builtin(item: Any) -> bool:
            script = item[0] if isinstance(item, tuple) else item
            return type(script).__module__.startswith("modules.processing_scripts.")

        return super().run(p, *[s for s in scripts if not builtin(s)], *[s for s in scripts if builtin(s)])


def reset_host_state() -> None:
    _H.reset_host_state()
    from backend.sampling import sampling_function

    sampling_function._FORGE.FREE_MEMORY = float("inf")


def make_host(kind: str = "sd15", seed: int = 0) -> Host:
    """A tiny ``sd_model`` of a Forge Neo family, installed as ``shared.sd_model``."""
    if kind == "sd35":
        raise ValueError("Forge Neo has no SD3/SD3.5 engine")
    if kind in ("sd15", "flux"):
        host = _H.make_host(kind, seed)
        reset_host_state()
        return Host(kind, host.sd_model)
    if kind == "flux_svdq":
        return _svdq_flux(seed)
    engines = {
        "chroma": "chroma.Chroma",
        "zimage": "zimage.ZImage",
        "qwen": "qwen.QwenImage",
        "lumina": "lumina.Lumina2",
        "anima": "anima.Anima",
        "wan": "wan.Wan",
    }
    if kind not in engines:
        raise ValueError(f"unknown host kind {kind!r}: sd15, flux, flux_svdq, chroma, zimage, qwen, lumina, anima, wan")
    import importlib

    from modules import shared
    from modules.sd_models import CheckpointInfo

    from tests.fake_neo import tiny_dit

    reset_host_state()
    tiny_text = forge_harness._sibling("tiny_text")
    invariant = forge_harness._sibling("batch_invariance").make_batch_invariant
    tokenizer: Any = tiny_text.FakeT5Tokenizer()
    if kind == "chroma":
        from backend.nn.chroma import tiny_chroma

        network = tiny_chroma(seed)
    elif kind == "qwen":
        from backend.nn.qwen import tiny_qwen_image

        network = tiny_qwen_image(seed)
    elif kind in ("zimage", "lumina"):
        from backend.nn.lumina import tiny_next_dit

        network = tiny_next_dit(seed, pad_tokens_multiple=8 if kind == "zimage" else None)  # Neo's Z-Image: 32
    else:
        network = tiny_dit.tiny_joint_dit(seed)
    if kind in ("qwen", "zimage", "lumina"):
        from backend.text_processing._comfy import ChatTokenizer

        tokenizer = ChatTokenizer()
    components = {
        "transformer": invariant(network),
        "text_encoder": invariant(tiny_text.TinyT5Encoder(width=32, seed=seed + 2)),
        "tokenizer": tokenizer,
    }
    module_name, class_name = engines[kind].split(".")
    engine = getattr(importlib.import_module(f"backend.diffusion_engine.{module_name}"), class_name)
    sd_model = engine(SimpleNamespace(huggingface_repo=f"neo/{kind}", inpaint_model=lambda: False), components)
    info = CheckpointInfo(f"tiny-neo-{kind}-{seed}")
    sd_model.sd_checkpoint_info = info
    sd_model.filename = info.filename
    sd_model.sd_model_hash = info.calculate_shorthash()
    sd_model.extra_generation_params = {}
    sd_model.comments = []
    shared.sd_model = sd_model
    return Host(kind, sd_model)


def _svdq_flux(seed: int) -> Host:
    """Flux dev whose network is an SVDQ wrapper (backend/nn/svdq.py): the simulated Flux engine, with
    the tiny joint network standing in for Nunchaku's kernels."""
    from backend.nn.svdq import SVDQFluxTransformer2DModel

    from tests.fake_neo import tiny_dit

    host = _H.make_host("flux", seed)  # builds the engine; its network is swapped below
    network = forge_harness._sibling("batch_invariance").make_batch_invariant(tiny_dit.tiny_joint_dit(seed))
    unet = host.sd_model.forge_objects.unet
    wrapper = SVDQFluxTransformer2DModel(network)
    predictor = unet.model.predictor
    patcher = type(unet).from_model(model=wrapper, diffusers_scheduler=None, k_predictor=predictor, config=None)
    for objects in (host.sd_model.forge_objects, host.sd_model.forge_objects_original):
        objects.unet = patcher
    host.sd_model.forge_objects_after_applying_lora = host.sd_model.forge_objects.shallow_copy()
    reset_host_state()
    return Host("flux_svdq", host.sd_model)
