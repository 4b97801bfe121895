"""Test harness for the simulated AUTOMATIC1111 1.10.1 host in ``modules/``.

- ``make_host(seed=0)``: a tiny SD1-style model (``FakeSdModel``: diffusers UNet from
  tests/tiny_models.py, a hashing/nn.Embedding text encoder with 77-token chunks and a tiny
  textual-inversion database) installed as ``modules.shared.sd_model``; resets opts and state.
  ``make_sdxl_host``: SDXL-shaped (dict conds: two encoders side by side + a vector holding the image
  size); ``make_sd3_host``: SD3-shaped (a tiny MM-DiT, CLIP chunks then T5 tokens, flow denoiser);
  ``host_session(arch=...)`` picks one.
- Samplers: Euler and LCM (k-diffusion), DDIM, DDIM CFG++ and PLMS (CompVis timesteps); the refiner
  switch (``p.refiner_checkpoint_info = FakeCheckpointInfo(name, loader)``).
- ``FakeProcessing`` (txt2img, optional hires fix) and ``FakeImg2ImgProcessing`` (latent img2img /
  inpainting): the parts of modules/processing.py's StableDiffusionProcessing* a script sees.
- ``process_images(p)``: modules/processing.py process_images + process_images_inner, in the real
  order of alwayson script hooks; ``txt2img(p)`` runs it inside ``state.begin()`` and ``closing(p)``.

There is no VAE: "images" are the final latents (CPU, float32), deterministic from the seeds.
``AUTOCAST_DTYPE = torch.bfloat16`` runs conds and sampling under CPU autocast (float32 otherwise).
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import re
import zlib
from contextlib import closing
from typing import Any

import torch

from tests.fake_a1111 import install, installed, is_installed, uninstall  # noqa: F401  (re-exported)
from tests.tiny_models import CONTEXT_DIM, tiny_sd3_mmdit, tiny_unet

with installed():
    from modules import errors, extra_networks, prompt_parser, script_callbacks, sd_hijack, sd_samplers, shared
    from modules.scripts import MaskBlendArgs, PostSampleArgs, ScriptRunner
    from modules.sd_hijack_clip import TextConditionalModel
    from modules.sd_samplers_kdiffusion import KDiffusionSampler
    from modules.shared import opts, state
    from modules.textual_inversion.textual_inversion import Embedding, EmbeddingDatabase

OPT_C = 4  # latent channels (modules/processing.py opt_C)
OPT_F = 8  # pixels per latent cell (modules/processing.py opt_f)

FakeSampler = KDiffusionSampler  # the one sampler class of the fake (modules/sd_samplers_kdiffusion.py)

# The dtype the host's autocast runs in (A1111 on a GPU: fp16, or bf16 with --precision autocast), or
# None for float32 without autocast (the default, as with --no-half on the CPU). Tests set it to
# torch.bfloat16: conds and sampling then run under CPU autocast, as below.
AUTOCAST_DTYPE: torch.dtype | None = None


def autocast() -> Any:
    """mirrors modules/devices.py: autocast (1.10.1) -- torch.autocast in the host's dtype, or nothing."""
    if AUTOCAST_DTYPE is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=AUTOCAST_DTYPE)


def _while_installed(function: Any) -> Any:
    """Runs ``function`` with the fake installed, so lazy ``from modules import ...`` in extension
    code called from it (scripts, callbacks) resolves to the fake."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with installed():
            return function(*args, **kwargs)

    return wrapper


# -- the model ---------------------------------------------------------------------------------------
class FakeClipEmbedder(TextConditionalModel):
    """Stands in for modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWords (SD1).

    Chunking, BREAK, emphasis, comma backtracking and textual inversion are the inherited
    ``TextConditionalModel.tokenize_line``; the "tokenizer" lower-cases and splits into letter runs,
    digit runs and single punctuation characters, each mapped to a stable id (CRC32, not CLIP's
    BPE); the "transformer" is a seeded ``nn.Embedding`` lookup, with embedding vectors written at
    chunk positions ``offset+1 ... offset+vectors`` (mirrors sd_hijack.py EmbeddingsWithFixes).
    """

    VOCAB = 49408
    _WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")

    def __init__(self, seed: int = 0, dim: int = CONTEXT_DIM) -> None:
        super().__init__()
        self.id_start, self.id_end, self.id_pad = 49406, 49407, 49407
        self.comma_token = 267
        generator = torch.Generator().manual_seed(seed + 1)
        # Mean 1 (not 0) so that EmphasisOriginal's mean renormalisation stays well conditioned.
        weight = torch.randn(self.VOCAB, dim, generator=generator) + 1.0
        self.token_embedding = torch.nn.Embedding(self.VOCAB, dim, _weight=weight).requires_grad_(False)

    def token_id(self, word: str) -> int:
        if word == ",":
            return self.comma_token
        if len(word) == 1 and not word.isalnum():
            return 256 + zlib.crc32(word.encode()) % 700
        return 1000 + zlib.crc32(word.encode()) % 48000

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[self.token_id(w) for w in self._WORD.findall(text.lower())] for text in texts]

    def encode_with_transformers(self, tokens: torch.Tensor) -> torch.Tensor:
        batch_fixes, self.hijack.fixes = self.hijack.fixes, None
        z = self.token_embedding(tokens)
        for row, fixes in enumerate(batch_fixes or []):
            for offset, embedding in fixes:
                vec = embedding.vec.to(z)
                n = min(z.shape[1] - offset - 1, vec.shape[0])
                z[row, offset + 1 : offset + 1 + n] = vec[:n]
        return z

    def encode_embedding_init_text(self, init_text: str, nvpt: int) -> torch.Tensor:
        ids = self.tokenize([init_text])[0][:nvpt]
        return self.token_embedding(torch.asarray(ids, dtype=torch.long))


class FakeDiffusionWrapper(torch.nn.Module):
    """mirrors ldm/models/diffusion/ddpm.py: DiffusionWrapper.forward for 'crossattn' (the UNet gets
    ``context = cat(c_crossattn, 1)``, ``c_concat`` is ignored) and 'hybrid', the inpainting models
    (the UNet's input is ``cat([x] + c_concat, 1)``: latent, mask, masked-image latent per row)."""

    def __init__(self, diffusion_model: torch.nn.Module, conditioning_key: str = "crossattn") -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        context = torch.cat(c_crossattn, 1)
        if self.conditioning_key == "hybrid":
            x = torch.cat([x] + c_concat, dim=1)
        return self.diffusion_model(x, t, encoder_hidden_states=context).sample


def encode_first_stage_stand_in(images: torch.Tensor) -> torch.Tensor:
    """Stands in for the VAE encoder (there is none): (B, 3, H, W) in [0, 1] -> (B, 4, H/8, W/8) by
    8x8 mean pooling and a fixed RGB -> 4-channel mix, so a grey image gives a constant latent."""
    mix = torch.tensor([[0.8, -0.3, 0.2], [0.1, 0.6, -0.4], [-0.5, 0.2, 0.7], [0.3, 0.3, 0.3]])
    pooled = torch.nn.functional.avg_pool2d(images.float(), OPT_F)
    return torch.einsum("kc,bchw->bkhw", mix.to(pooled), pooled)


class FakeCheckpointInfo:
    """Stands in for modules/sd_models.py CheckpointInfo (part of the cond cache key); ``loader``
    builds the model when the fake sd_models.reload_model_weights switches to it (refiner)."""

    def __init__(self, name: str, loader: Any = None) -> None:
        self.name = self.name_for_extra = self.title = self.short_title = name
        self.filename = f"{name}.safetensors"
        self.loader = loader


class FakeSdModel(torch.nn.Module):
    """The SD1 ``LatentDiffusion`` surface CFGDenoiser and extensions touch (eps-prediction)."""

    def __init__(self, unet: torch.nn.Module, text_encoder: FakeClipEmbedder, name: str = "fake-sd1") -> None:
        super().__init__()
        # An inpainting checkpoint (9 input channels) is a 'hybrid' LatentInpaintDiffusion.
        self.model = FakeDiffusionWrapper(unet, "hybrid" if _in_channels(unet) == 9 else "crossattn")
        self.cond_stage_model = text_encoder
        self.cond_stage_key = "crossattn"
        self.parameterization = "eps"
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_sd3 = True, False, False, False
        self.is_sdxl_inpaint = False
        self.latent_channels = OPT_C
        self.sd_checkpoint_info = FakeCheckpointInfo(name)
        self.sd_model_hash = f"{zlib.crc32(name.encode()):08x}"
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).to(torch.float32))
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])  # (1, 77, C)

    def get_learned_conditioning(self, c):
        """mirrors ldm LatentDiffusion.get_learned_conditioning (hijacked): (len(c), 77*k, C)."""
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond):
        """mirrors ldm LatentDiffusion.apply_model: a bare tensor becomes ``{'c_crossattn': [cond]}``."""
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    @contextlib.contextmanager
    def ema_scope(self, context: Any = None):
        yield


class FakeSdxlConditioner(torch.nn.Module):
    """Stands in for sgm's GeneralConditioner as hijacked by modules/sd_hijack.py for SDXL: two text
    embedders (CLIP-L and OpenCLIP-G stand-ins, both ``TextConditionalModel``: the same chunks and
    token positions), outputs concatenated on the feature axis."""

    def __init__(self, seed: int, dim: int) -> None:
        super().__init__()
        self.embedders = torch.nn.ModuleList([FakeClipEmbedder(seed, dim // 2), FakeClipEmbedder(seed + 100, dim // 2)])


class FakeSdxlWrapper(torch.nn.Module):
    """mirrors sgm/modules/diffusionmodules/wrappers.py: OpenAIWrapper.forward(x, t, c): the UNet gets
    ``context=c['crossattn']`` and ``y=c['vector']`` (here diffusers' ``class_labels``)."""

    def __init__(self, diffusion_model: torch.nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"  # set by sd_models_xl.extend_sdxl

    def forward(self, x, t, c, **kwargs):
        return self.diffusion_model(x, t, encoder_hidden_states=c["crossattn"], class_labels=c["vector"]).sample


def _in_channels(unet: torch.nn.Module) -> int:
    return int(getattr(getattr(unet, "config", None), "in_channels", 4))


class FakeSdxlModel(FakeSdModel):
    """The SDXL ``DiffusionEngine`` surface (modules/sd_models_xl.py): dict conds ``{'crossattn': (B, 77k, C),
    'vector': (B, V)}`` where the vector holds a pooled text embedding and the image size embedding,
    ``cond_stage_model`` is the conditioner (``.embedders``), ``apply_model(x, t, cond)`` passes the dict."""

    SIZE_FEATURES = 8

    def __init__(self, unet: torch.nn.Module, seed: int, name: str = "fake-sdxl") -> None:
        super().__init__(unet, FakeSdxlConditioner(seed, CONTEXT_DIM), name=name)
        self.model = FakeSdxlWrapper(unet)
        self.conditioner = self.cond_stage_model
        self.cond_stage_key = "txt"
        self.is_sd1, self.is_sdxl = False, True
        self.is_sdxl_inpaint = _in_channels(unet) == 9  # sd_models.py sets it from the input block's width
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])["crossattn"]  # get_empty_cond

    def get_learned_conditioning(self, batch):
        """mirrors sd_models_xl.py: get_learned_conditioning (1.10.1): width/height from the
        SdConditioning (default 1024), crop from opts; the text embedders' outputs concatenated."""
        if not hasattr(self, "conditioner"):  # during FakeSdModel.__init__
            return None
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        crop = [shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left]
        force_zero = getattr(batch, "is_negative_prompt", False) and all(x == "" for x in batch)
        parts = [embedder(list(batch)) for embedder in self.conditioner.embedders]
        crossattn = torch.cat(parts, dim=-1)
        if force_zero:
            crossattn = torch.zeros_like(crossattn)
        pooled = parts[1][:, :77].mean(dim=1)  # stands in for OpenCLIP-G's pooled EOS output
        sizes = torch.tensor([height, width, *crop, height, width], dtype=torch.float32) / 1024
        frequencies = torch.arange(1, self.SIZE_FEATURES // 2 + 1, dtype=torch.float32)
        size_embedding = torch.cat([torch.sin(sizes.sum() * frequencies), torch.cos(sizes[0] * frequencies)])
        vector = torch.cat([pooled, size_embedding.expand(len(batch), -1)], dim=-1)
        return {"crossattn": crossattn, "vector": vector}

    def apply_model(self, x_noisy, t, cond):
        """mirrors sd_models_xl.py: apply_model (1.10.1): SDXL inpainting concatenates ``c_concat``."""
        if self.is_sdxl_inpaint:
            x_noisy = torch.cat([x_noisy] + cond["c_concat"], dim=1)
        return self.model(x_noisy, t, cond)


class FakeSd3T5(torch.nn.Module):
    """mirrors modules/models/sd3/sd3_cond.py: Sd3T5 (1.10.1): no BOS, the prompt's tokens then EOS,
    padded (or cut) to ``token_count`` = the CLIP part's length; a seeded embedding stands in for T5.
    Zeros unless ``opts.sd3_enable_t5`` (off by default, as in the real host)."""

    def __init__(self, seed: int, dim: int) -> None:
        super().__init__()
        self.words = FakeClipEmbedder(seed + 200, dim)  # only its tokenizer and embedding table
        self.t5xxl = self.words  # the real one is None when the model was loaded with T5 off
        self.id_end, self.id_pad = 1, 0

    def tokenize_line(self, line: str, *, target_token_count: int | None = None) -> tuple[list[int], list[float]]:
        tokens = [t for text, _ in prompt_parser.parse_prompt_attention(line) if text != "BREAK"
                  for t in self.words.tokenize([text])[0]] + [self.id_end]
        if target_token_count is not None:
            tokens = (tokens + [self.id_pad] * target_token_count)[:target_token_count]
        return tokens, [1.0] * len(tokens)

    def forward(self, texts: list[str], *, token_count: int) -> torch.Tensor:
        if not self.t5xxl or not shared.opts.sd3_enable_t5:
            return torch.zeros((len(texts), token_count, self.words.token_embedding.embedding_dim))
        tokens = torch.asarray([self.tokenize_line(text, target_token_count=token_count)[0] for text in texts])
        return self.words.token_embedding(tokens)


class FakeSd3Cond(torch.nn.Module):
    """mirrors sd3_cond.py: SD3Cond.forward (1.10.1): ``crossattn`` = the CLIP-L/G chunks (77 each,
    ``model_lg``, a TextConditionalModel) followed by as many T5 tokens; ``vector`` = pooled CLIP."""

    def __init__(self, seed: int, dim: int, pooled: int) -> None:
        super().__init__()
        self.model_lg = FakeClipEmbedder(seed, pooled)
        self.model_t5 = FakeSd3T5(seed, dim)
        self.dim = dim

    def forward(self, prompts: list[str]) -> dict:
        lg_out = self.model_lg(list(prompts))
        vector = lg_out[:, :77].mean(dim=1)  # stands in for the pooled CLIP-L/G outputs
        lg_out = torch.nn.functional.pad(lg_out, (0, self.dim - lg_out.shape[-1]))  # to T5's width, as real
        t5_out = self.model_t5(list(prompts), token_count=lg_out.shape[1])
        return {"crossattn": torch.cat([lg_out, t5_out], dim=-2), "vector": vector}


class FakeSd3Denoiser(torch.nn.Module):
    """mirrors sd3_model.py SD3Denoiser + sd3_impls.py BaseModel/ModelSamplingDiscreteFlow (1.10.1):
    flow matching with shift 3; ``forward(x, sigma, cond=...)`` returns the denoised x - v * sigma."""

    def __init__(self, model: Any, shift: float = 3.0) -> None:
        super().__init__()
        self.inner_model = model
        t = torch.arange(1, 1001, dtype=torch.float32) / 1000.0
        self.register_buffer("sigmas", shift * t / (1 + (shift - 1) * t))

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        index = torch.linspace(len(self.sigmas) - 1, 0, n).round().long()
        return torch.cat([self.sigmas[index], self.sigmas.new_zeros([1])])

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        v = self.inner_model.model.diffusion_model(
            input, sigma * 1000, context=cond["crossattn"], y=cond["vector"]
        )
        return input - v * sigma.view(-1, *[1] * (input.ndim - 1))


class FakeSd3Model(FakeSdModel):
    """The SD3 ``SD3Inferencer`` surface (modules/models/sd3/sd3_model.py, 1.10.1): 16 latent channels,
    dict conds with CLIP and T5 tokens in one ``crossattn`` sequence, an MM-DiT without cross-attention
    modules, ``create_denoiser()`` for the k-diffusion samplers."""

    def __init__(self, dit: torch.nn.Module, seed: int, name: str = "fake-sd3") -> None:
        super().__init__(dit, FakeSd3Cond(seed, CONTEXT_DIM, 16), name=name)
        self.model.diffusion_model = dit
        self.cond_stage_key = "txt"
        self.is_sd1, self.is_sd3 = False, True
        self.latent_channels = 16
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])["crossattn"]

    def get_learned_conditioning(self, batch):
        return self.cond_stage_model(batch)

    def apply_model(self, x, t, cond):
        raise NotImplementedError("SD3 runs through create_denoiser()")

    def create_denoiser(self) -> FakeSd3Denoiser:
        return FakeSd3Denoiser(self)


def register_embedding(name: str, vectors: int, seed: int = 0, model: FakeSdModel | None = None) -> Embedding:
    """Registers a textual-inversion embedding ``name`` with ``vectors`` random vectors."""
    model = model or shared.sd_model
    dim = model.cond_stage_model.token_embedding.embedding_dim
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
    embedding = Embedding(torch.randn(vectors, dim, generator=generator) + 1.0, name)
    embedding.vectors = vectors
    embedding.shape = dim
    return sd_hijack.model_hijack.embedding_db.register_embedding(embedding, model)


@_while_installed
def make_host(seed: int = 0, embeddings: dict[str, int] | None = None, inpainting: bool = False) -> FakeSdModel:
    """Builds the fake SD1 model (``inpainting``: a 9-channel 'hybrid' inpainting model), installs it as
    ``shared.sd_model`` and fires ``on_model_loaded``.

    Also resets ``shared.opts`` and ``shared.state`` to defaults and gives ``model_hijack`` a new
    embedding database holding ``embeddings`` (name -> vector count; default ``{"emb_v2": 3}``).
    Registered script callbacks are left alone.
    """
    return _install_model(
        lambda: FakeSdModel(
            tiny_unet(seed, 9 if inpainting else 4).requires_grad_(False), FakeClipEmbedder(seed),
            name=f"fake-sd1-{'inpainting-' if inpainting else ''}{seed}",
        ),
        seed,
        {"emb_v2": 3} if embeddings is None else embeddings,
    )


def _install_model(build: Any, seed: int, embeddings: dict[str, int]) -> Any:
    """Fresh opts, state and embedding database, then ``build()`` becomes ``shared.sd_model``."""
    opts.reset()
    state.reset()
    sd_hijack.model_hijack.embedding_db = EmbeddingDatabase()
    sd_hijack.model_hijack.clear_comments()
    model = build().eval()
    shared.sd_model = model
    for name, vectors in embeddings.items():
        register_embedding(name, vectors, seed, model)
    script_callbacks.model_loaded_callback(model)
    return model


# -- noise -------------------------------------------------------------------------------------------
class ImageRNG:
    """mirrors modules/rng.py: ImageRNG (1.10.1), without subseeds: one CPU generator per seed; the
    first ``next()`` is each seed's first ``randn(shape)``, later calls continue those generators."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(int(x) for x in shape)
        self.seeds = seeds
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def next(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])


def get_fixed_seed(seed: Any) -> Any:
    """mirrors modules/processing.py: get_fixed_seed (1.10.1)."""
    if seed in ("", None):
        seed = -1
    elif isinstance(seed, str):
        seed = int(seed)
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


# -- processing --------------------------------------------------------------------------------------
class FakeProcessing:
    """mirrors modules/processing.py: StableDiffusionProcessing + StableDiffusionProcessingTxt2Img (1.10.1).

    The conditioning caches are class-level ``[params, result]`` lists shared by every instance, and
    ``close()`` resets them only if ``opts.persistent_cond_cache`` is False (default True), as in the
    real host.
    """

    cached_uc = [None, None]
    cached_c = [None, None]
    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    def __init__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] = "",
        seed: int | list[int] = 0,
        width: int = 64,
        height: int = 64,
        steps: int = 4,
        cfg_scale: float = 7.0,
        sampler_name: str = "Euler",
        batch_size: int = 1,
        n_iter: int = 1,
        enable_hr: bool = False,
        hr_scale: float = 2.0,
        hr_second_pass_steps: int = 0,
        hr_resize_x: int = 0,
        hr_resize_y: int = 0,
        hr_prompt: str | list[str] = "",
        hr_negative_prompt: str | list[str] = "",
        hr_sampler_name: str | None = None,
        denoising_strength: float = 0.75,
        s_min_uncond: float | None = None,
        scripts: list | ScriptRunner | None = None,
        script_args: list | None = None,
        extra_generation_params: dict | None = None,
        **extra: Any,
    ) -> None:
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.subseed, self.subseed_strength = seed, -1, 0
        self.seed_resize_from_h = self.seed_resize_from_w = -1
        self.width, self.height, self.steps, self.cfg_scale = width, height, steps, cfg_scale
        self.sampler_name, self.scheduler = sampler_name, None
        self.batch_size, self.n_iter = batch_size, n_iter
        self.enable_hr, self.hr_scale, self.hr_second_pass_steps = enable_hr, hr_scale, hr_second_pass_steps
        self.hr_resize_x, self.hr_resize_y = hr_resize_x, hr_resize_y
        self.hr_prompt, self.hr_negative_prompt = hr_prompt, hr_negative_prompt
        self.hr_sampler_name, self.hr_scheduler, self.hr_upscaler = hr_sampler_name, None, None
        self.hr_checkpoint_info = None
        self.denoising_strength = denoising_strength
        self.s_min_uncond = s_min_uncond
        self.s_churn = self.s_tmin = self.s_tmax = self.s_noise = None
        self.eta = None
        self.ddim_discretize = None
        self.styles: list[str] = []
        self.restore_faces = self.tiling = False
        self.override_settings: dict = {}
        self.extra_generation_params = dict(extra_generation_params or {})
        self.comments: dict[str, int] = {}
        self.sampler_noise_scheduler_override = None
        self.refiner_checkpoint = self.refiner_switch_at = self.refiner_checkpoint_info = None
        self.token_merging_ratio = self.token_merging_ratio_hr = 0
        self.disable_extra_networks = False
        self.firstpass_image = None
        self.is_api = False
        self.user = None

        self.sampler = None
        self.is_using_inpainting_conditioning = False
        self.is_hr_pass = False
        self.c = self.uc = None
        self.hr_c = self.hr_uc = None
        self.rng = None
        self.step_multiplier = 1
        self.firstpass_steps = steps
        self.all_prompts = self.all_negative_prompts = self.all_seeds = self.all_subseeds = None
        self.all_hr_prompts = self.all_hr_negative_prompts = None
        self.iteration = 0
        self.main_prompt = self.main_negative_prompt = None
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
        self.hr_prompts = self.hr_negative_prompts = None
        self.extra_network_data: dict = {}
        self.hr_extra_network_data: dict = {}
        self.hr_upscale_to_x = self.hr_upscale_to_y = 0
        self.truncate_x = self.truncate_y = 0
        self.latent_scale_mode = None
        self.sd_model_name = self.sd_model_hash = None

        # instance attributes pointing at the class-level cache lists, like __post_init__
        self.cached_uc = FakeProcessing.cached_uc
        self.cached_c = FakeProcessing.cached_c
        self.cached_hr_uc = FakeProcessing.cached_hr_uc
        self.cached_hr_c = FakeProcessing.cached_hr_c

        self.scripts_value = None
        self.script_args_value = None
        self.scripts_setup_complete = False
        self.scripts = scripts if isinstance(scripts, ScriptRunner) else ScriptRunner(scripts or [])
        self.script_args = list(script_args or [])
        for key, value in extra.items():
            setattr(self, key, value)

    # -- properties of the real class
    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self) -> None:
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        return self.token_merging_ratio_hr if for_hr else self.token_merging_ratio

    def fill_fields_from_opts(self) -> None:
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond

    def txt2img_image_conditioning(self, x, width=None, height=None):
        """mirrors processing.py: txt2img_image_conditioning (1.10.1): inpainting models (SD1 'hybrid',
        SDXL inpaint) get a mask of ones and the latent of a grey image; others zeros (B, 5, 1, 1)."""
        model = self.sd_model
        self.is_using_inpainting_conditioning = model.model.conditioning_key in {"hybrid", "concat"}
        if self.is_using_inpainting_conditioning or model.is_sdxl_inpaint:
            grey = torch.ones(x.shape[0], 3, height or self.height, width or self.width) * 0.5
            image_conditioning = encode_first_stage_stand_in(grey).to(x.device)
            image_conditioning = torch.nn.functional.pad(image_conditioning, (0, 0, 0, 0, 1, 0), value=1.0)
            return image_conditioning.to(x.dtype)
        return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)

    # -- prompts and conditioning
    def setup_prompts(self) -> None:
        """mirrors StableDiffusionProcessing(Txt2Img).setup_prompts (1.10.1), without styles."""
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(
                f"Received a different number of prompts ({len(self.all_prompts)}) "
                f"and negative prompts ({len(self.all_negative_prompts)})"
            )
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        n = self.batch_size * self.n_iter
        self.all_hr_prompts = self.hr_prompt if isinstance(self.hr_prompt, list) else n * [self.hr_prompt]
        neg = self.hr_negative_prompt
        self.all_hr_negative_prompts = neg if isinstance(neg, list) else n * [neg]

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        """mirrors StableDiffusionProcessing.cached_params (1.10.1): what invalidates a cond cache."""
        return (
            required_prompts,
            steps,
            hires_steps,
            use_old_scheduling,
            opts.CLIP_stop_at_last_layers,
            shared.sd_model.sd_checkpoint_info,
            extra_network_data,
            opts.sdxl_crop_left,
            opts.sdxl_crop_top,
            self.width,
            self.height,
            opts.fp8_storage,
            opts.cache_fp16_weight,
            opts.emphasis,
        )

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        """mirrors StableDiffusionProcessing.get_conds_with_caching (1.10.1).

        ``caches`` is a list of ``[params, result]`` lists; a hit in any returns its result; a miss
        computes ``function(shared.sd_model, required_prompts, steps, hires_steps, use_old_scheduling)``
        and stores it in ``caches[0]``.
        """
        if opts.use_old_scheduling:
            old = prompt_parser.get_learned_conditioning_prompt_schedules(required_prompts, steps, hires_steps, False)
            new = prompt_parser.get_learned_conditioning_prompt_schedules(required_prompts, steps, hires_steps, True)
            if old != new:
                self.extra_generation_params["Old prompt editing timelines"] = True

        params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps, opts.use_old_scheduling)
        for cache in caches:
            if cache[0] is not None and params == cache[0]:
                return cache[1]

        cache = caches[0]
        with autocast():
            cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps, opts.use_old_scheduling)
        cache[0] = params
        return cache[1]

    def setup_conds(self) -> None:
        """mirrors StableDiffusionProcessing(Txt2Img).setup_conds (1.10.1)."""
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return

        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative_prompts = prompt_parser.SdConditioning(
            self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True
        )
        config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = config.total_steps(self.steps) if config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps

        self.uc = self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning,
            negative_prompts,
            total_steps,
            [self.cached_uc],
            self.extra_network_data,
        )
        self.c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            prompts,
            total_steps,
            [self.cached_c],
            self.extra_network_data,
        )
        self.hr_uc = None
        self.hr_c = None
        if self.enable_hr and self.hr_checkpoint_info is None and opts.hires_fix_use_firstpass_conds:
            self.calculate_hr_conds()

    def calculate_hr_conds(self) -> None:
        """mirrors StableDiffusionProcessingTxt2Img.calculate_hr_conds (1.10.1): hires-size
        SdConditioning, ``steps=firstpass_steps``, ``hires_steps`` = the hires pass's total steps,
        caches ``[cached_hr_*, cached_*]``."""
        if self.hr_c is not None:
            return
        size = {"width": self.hr_upscale_to_x, "height": self.hr_upscale_to_y}
        hr_prompts = prompt_parser.SdConditioning(self.hr_prompts, **size)
        hr_negative_prompts = prompt_parser.SdConditioning(self.hr_negative_prompts, is_negative_prompt=True, **size)
        config = sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total_steps = config.total_steps(steps) if config else steps

        self.hr_uc = self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning,
            hr_negative_prompts,
            self.firstpass_steps,
            [self.cached_hr_uc, self.cached_uc],
            self.hr_extra_network_data,
            total_steps,
        )
        self.hr_c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            hr_prompts,
            self.firstpass_steps,
            [self.cached_hr_c, self.cached_c],
            self.hr_extra_network_data,
            total_steps,
        )

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return self.c, self.uc

    def parse_extra_network_prompts(self) -> None:
        """mirrors StableDiffusionProcessing(Txt2Img).parse_extra_network_prompts (1.10.1)."""
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)
        if self.enable_hr:
            a, b = self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size
            self.hr_prompts = self.all_hr_prompts[a:b]
            self.hr_negative_prompts = self.all_hr_negative_prompts[a:b]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)

    def close(self) -> None:
        """mirrors StableDiffusionProcessing(Txt2Img).close (1.10.1)."""
        self.sampler = None
        self.c = self.uc = None
        self.hr_c = self.hr_uc = None
        if not opts.persistent_cond_cache:
            FakeProcessing.cached_c = [None, None]
            FakeProcessing.cached_uc = [None, None]
            FakeProcessing.cached_hr_c = [None, None]
            FakeProcessing.cached_hr_uc = [None, None]

    # -- sampling
    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        """mirrors StableDiffusionProcessingTxt2Img.init (1.10.1): hires target size and infotext."""
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
            self.extra_generation_params["Hires sampler"] = self.hr_sampler_name

        def get_hr_prompt(p, index, prompt_text, **kwargs):
            hr_prompt = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        def get_hr_negative_prompt(p, index, negative_prompt, **kwargs):
            hr_negative_prompt = p.all_hr_negative_prompts[index]
            return hr_negative_prompt if hr_negative_prompt != negative_prompt else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt
        self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt
        self.latent_scale_mode = shared.latent_upscale_modes[shared.latent_upscale_default_mode]
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
        else:
            self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
            self.hr_upscale_to_x = self.hr_resize_x or self.hr_resize_y * self.width // self.height
            self.hr_upscale_to_y = self.hr_resize_y or self.hr_resize_x * self.height // self.width
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """mirrors StableDiffusionProcessingTxt2Img.sample (1.10.1)."""
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(x)
        )
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """mirrors StableDiffusionProcessingTxt2Img.sample_hr_pass (1.10.1), latent upscaler only."""
        if state.interrupted:
            return samples

        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        size = (self.hr_upscale_to_y // OPT_F, self.hr_upscale_to_x // OPT_F)
        samples = torch.nn.functional.interpolate(
            samples, size=size, mode=self.latent_scale_mode["mode"], antialias=self.latent_scale_mode["antialias"]
        )
        image_conditioning = self.txt2img_image_conditioning(samples)
        state.nextjob()

        self.rng = ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        if not self.disable_extra_networks:
            extra_networks.activate(self, self.hr_extra_network_data)
        self.calculate_hr_conds()

        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)

        samples = self.sampler.sample_img2img(
            self,
            samples,
            noise,
            self.hr_c,
            self.hr_uc,
            steps=self.hr_second_pass_steps or self.steps,
            image_conditioning=image_conditioning,
        )
        self.sampler = None
        self.is_hr_pass = False
        return samples


class FakeImg2ImgProcessing(FakeProcessing):
    """mirrors modules/processing.py: StableDiffusionProcessingImg2Img (1.10.1) on latents.

    ``init_latent`` (B or 1, 4, h, w) replaces the encoded init images; ``image_mask`` (same spatial
    size, 1 = repaint) gives ``p.nmask = image_mask`` and ``p.mask = 1 - image_mask``, which the
    sampler copies to the CFGDenoiser (inpaint blend). No hires fix.
    """

    def __init__(self, init_latent: torch.Tensor, image_mask: torch.Tensor | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("denoising_strength", 0.75)
        super().__init__(**kwargs)
        self.enable_hr = False
        self.init_latent_source = init_latent
        self.image_mask = image_mask
        self.image_cfg_scale = None
        self.initial_noise_multiplier = 1.0

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        latent = self.init_latent_source.to(torch.float32)
        if latent.shape[0] == 1 and self.batch_size > 1:
            latent = latent.expand(self.batch_size, -1, -1, -1)
        self.init_latent = latent.clone()
        if self.image_mask is not None:
            latmask = self.image_mask.to(torch.float32).reshape(1, 1, *self.init_latent.shape[2:])
            self.mask = torch.asarray(1.0 - latmask).expand_as(self.init_latent).clone()
            self.nmask = torch.asarray(latmask).expand_as(self.init_latent).clone()
        self.image_conditioning = self.img2img_image_conditioning(self.init_latent, self.image_mask)

    def img2img_image_conditioning(self, latent_image: torch.Tensor, image_mask: torch.Tensor | None) -> torch.Tensor:
        """mirrors processing.py: img2img_image_conditioning + inpainting_image_conditioning (1.10.1) on
        latents: inpainting models get ``cat([mask, encoded masked image])`` per image (the masked image
        stands in as ``init_latent * (1 - mask)``, lerped by opts.inpainting_mask_weight); others zeros."""
        model = self.sd_model
        if model.model.conditioning_key not in {"hybrid", "concat"} and not model.is_sdxl_inpaint:
            return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)
        self.is_using_inpainting_conditioning = True
        if image_mask is None:
            mask = latent_image.new_ones(1, 1, *latent_image.shape[-2:])
        else:
            mask = image_mask.to(latent_image).reshape(1, 1, *latent_image.shape[-2:]).round()
        masked = torch.lerp(latent_image, latent_image * (1.0 - mask), opts.inpainting_mask_weight)
        return torch.cat([mask.expand(latent_image.shape[0], -1, -1, -1), masked], dim=1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """mirrors StableDiffusionProcessingImg2Img.sample (1.10.1)."""
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample_img2img(
            self,
            self.init_latent,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=self.image_conditioning,
        )
        if getattr(self, "mask", None) is not None:
            blended = samples * self.nmask + self.init_latent * self.mask
            if self.scripts is not None:
                mba = MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended)
                self.scripts.on_mask_blend(self, mba)
                blended = mba.blended_latent
            samples = blended
        return samples


class FakeProcessed:
    """mirrors modules/processing.py: Processed (1.10.1), the fields tests need; ``images`` are
    per-image latents (no VAE), ``latents`` all of them stacked."""

    def __init__(self, p: FakeProcessing, images_list: list, infotexts: list[str]) -> None:
        self.images = images_list
        self.latents = torch.stack(images_list) if images_list else None
        self.prompt = p.prompt if not isinstance(p.prompt, list) else p.prompt[0]
        self.negative_prompt = p.negative_prompt
        self.all_prompts = p.all_prompts
        self.all_negative_prompts = p.all_negative_prompts
        self.all_seeds = p.all_seeds
        self.seed = p.all_seeds[0] if p.all_seeds else -1
        self.width, self.height = p.width, p.height
        self.steps, self.cfg_scale, self.sampler_name = p.steps, p.cfg_scale, p.sampler_name
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""


def _quote(value: Any) -> Any:
    """mirrors modules/infotext_utils.py: quote (1.10.1)."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if ("," in text or "\n" in text or ":" in text) else value


_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def _unquote(text: str) -> str:
    """mirrors modules/infotext_utils.py: unquote (1.10.1)."""
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_infotext_params(infotext: str) -> dict[str, str]:
    """mirrors modules/infotext_utils.py: parse_generation_parameters (1.10.1), the last line's
    ``key: value`` pairs; a pair it cannot read is printed as ``Error parsing`` and dropped."""
    lastline = infotext.strip().split("\n")[-1]
    params: dict[str, str] = {}
    for key, value in _RE_PARAM.findall(lastline):
        try:
            if value[0] == '"' and value[-1] == '"':
                value = _unquote(value)
            size = _RE_IMAGESIZE.match(value)
            if size is not None:
                params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
            else:
                params[key] = value
        except Exception:
            print(f'Error parsing "{key}: {value}"')
    return params


def create_infotext(p: FakeProcessing, index: int) -> str:
    """mirrors modules/processing.py: create_infotext (1.10.1), the base keys plus
    ``extra_generation_params`` (lists are indexed per image, callables get ``p``, ``index``,
    ``prompt_text``, ``negative_prompt`` and more as keywords; None values are dropped)."""
    prompt_text = p.all_prompts[index]
    negative_prompt = p.all_negative_prompts[index]
    all_prompts, all_seeds = p.all_prompts, p.all_seeds  # noqa: F841 (visible to callables)
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash,
        "Model": p.sd_model_name,
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None
    text = ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in generation_params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative}\n{text}".strip()


@_while_installed
def process_images(p: FakeProcessing) -> FakeProcessed:
    """mirrors modules/processing.py: process_images + process_images_inner (1.10.1).

    Hook order: before_process, process, [p.init], per batch: before_process_batch,
    (extra networks parsed), process_batch, setup_conds, p.sample (sampler creation,
    process_before_every_sampling, sampling; hires: before_hr, process_before_every_sampling,
    sample_img2img), post_sample, postprocess_batch (latents, not decoded images), then postprocess.
    Script errors are reported and ignored; sampling errors propagate.
    """
    if p.scripts is not None:
        p.scripts.before_process(p)

    seed = get_fixed_seed(p.seed)
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    sd_hijack.model_hijack.clear_comments()
    p.fill_fields_from_opts()
    p.setup_prompts()
    p.all_seeds = list(seed) if isinstance(seed, list) else [int(seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = [-1 + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    images: list[torch.Tensor] = []
    infotexts: list[str] = []
    with torch.no_grad(), p.sd_model.ema_scope():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break

            a, b = n * p.batch_size, (n + 1) * p.batch_size
            p.prompts = p.all_prompts[a:b]
            p.negative_prompts = p.all_negative_prompts[a:b]
            p.seeds = p.all_seeds[a:b]
            p.subseeds = p.all_subseeds[a:b]
            p.rng = ImageRNG((shared.sd_model.latent_channels, p.height // OPT_F, p.width // OPT_F), p.seeds)

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break

            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)

            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()
            p.extra_generation_params.update(sd_hijack.model_hijack.extra_generation_params)
            for comment in sd_hijack.model_hijack.comments:
                p.comment(comment)

            with autocast():  # processing.py: devices.without_autocast() only when the UNet needs upcast
                samples = p.sample(
                    conditioning=p.c,
                    unconditional_conditioning=p.uc,
                    seeds=p.seeds,
                    subseeds=p.subseeds,
                    subseed_strength=p.subseed_strength,
                    prompts=p.prompts,
                )
            if p.scripts is not None:
                ps = PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples

            samples = samples.to(device="cpu", dtype=torch.float32)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, samples, batch_number=n)

            for i, sample in enumerate(samples):
                images.append(sample)
                infotexts.append(create_infotext(p, n * p.batch_size + i))

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)

    res = FakeProcessed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


@_while_installed
def txt2img(p: FakeProcessing) -> FakeProcessed:
    """Runs ``p`` like modules/txt2img.py: ``state.begin()``, ``with closing(p): process_images(p)``."""
    state.begin(job="txt2img")
    try:
        with closing(p):
            return process_images(p)
    finally:
        state.end()


@_while_installed
def make_sdxl_host(seed: int = 0, inpainting: bool = False) -> FakeSdxlModel:
    """Like ``make_host`` with the SDXL-shaped model (dict conds, two text encoders); no embeddings."""
    vector = CONTEXT_DIM // 2 + FakeSdxlModel.SIZE_FEATURES
    unet = tiny_unet(seed, 9 if inpainting else 4, class_embed_type="projection",
                     projection_class_embeddings_input_dim=vector)
    return _install_model(lambda: FakeSdxlModel(unet.requires_grad_(False), seed, name=f"fake-sdxl-{seed}"), seed, {})


@_while_installed
def make_sd3_host(seed: int = 0) -> FakeSd3Model:
    """Like ``make_host`` with the SD3-shaped model (MM-DiT, CLIP + T5 tokens); no embeddings."""
    return _install_model(
        lambda: FakeSd3Model(tiny_sd3_mmdit(seed).requires_grad_(False), seed, name=f"fake-sd3-{seed}"), seed, {}
    )


@contextlib.contextmanager
def host_session(seed: int = 0, embeddings: dict[str, int] | None = None, arch: str = "sd1",
                 inpainting: bool = False):
    """``with host_session() as sd_model:`` - the fake installed and a fresh host made for the block
    (``arch``: "sd1", "sdxl" or "sd3"; ``inpainting``: the SD1/SDXL 9-channel inpainting model)."""
    makers = {"sd1": lambda: make_host(seed, embeddings, inpainting), "sdxl": lambda: make_sdxl_host(seed, inpainting),
              "sd3": lambda: make_sd3_host(seed)}
    with installed():
        yield makers[arch]()
