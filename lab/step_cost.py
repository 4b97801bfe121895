"""What DeGu costs per sampling step against plain CFG, through the simulated A1111 host's CFG path.

Run from the repository root:

    python -m lab.step_cost                  # SD1.5-size UNet at 32x32 and 64x64 latents (+ SDXL)
    python -m lab.step_cost --quick          # tiny models, a smoke run of every code path
    python -m lab.step_cost --device cuda --dtype float16

Every generation goes through ``tests/fake_a1111`` (``harness.txt2img``): the DeGu script's
``process_before_every_sampling``, the adapter's ``on_cfg_denoiser`` row insertion, its
``combine_denoised`` wrapper, the attention-capture hooks and the mask refinement all run exactly as
in the tests; only the model is bigger. Models have real architectures and random weights (diffusers
``UNet2DConditionModel`` with the SD1.5 / SDXL configs, nothing downloaded); the text encoder is the
fake host's ``FakeClipEmbedder`` at the model's context width (768 / 2048).

Variants, interleaved round by round (same model, sampler, size, seed; order reversed on odd rounds):

- ``plain``        DeGu installed but off: plain CFG, 2 UNet rows per image (prompt + uncond)
- ``attention``    DeGu, attention mask: 3 rows (prompt + generic + uncond), capture hooks on
- ``difference``   DeGu, difference mask: 3 rows, no capture
- ``full``         DeGu, mask_source "full": 3 rows, no capture (the memory baseline "3-row batch
                   without capture")
- ``window``       DeGu attention with start=0, end=0.5 (timed as whole generations)
- ``nu-plain`` / ``nu-degu``  no-uncond: the host's "Skip Early CFG" option at 1.0 skips the uncond
                   rows on every step, so plain runs 1 row (Flux-style single evaluation) and DeGu 2 rows
                   (s and g) with its no-uncond formula ``g + a_id * M * (s - g)`` (attention mask)

Only its smoke test (tests/test_step_cost_smoke.py) runs in the default pytest run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib_degu.attention import AttentionCapture
from lib_degu.settings import DeGuSettings
from lib_degu.step import Guide, is_active
from tests.a1111_support import adapter, make_script, script_args, shared
from tests.fake_a1111 import harness

with harness.installed():
    from modules.scripts import AlwaysVisible, Script

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of sks dog on a beach"
NEGATIVE = "blurry"
SEED = 3
CFG_SCALE = 7.0
MEMORY_TAG = "MEMORY_RESULT "

TARGETS = {
    "attention": 1.53,  # step-time ratio vs plain CFG
    "difference": 1.52,
    "code_share": 0.02,  # DeGu's own code as a share of a DeGu step
    "memory": 0.05,  # peak memory vs the 3-row batch without capture
    "no_uncond": 2.04,
    "window": 1.27,  # whole generation, active window 0-50 %
    "skip": 1.03,  # full mask at balance 0: no generic rows
    "refresh_default": 1.25,  # whole generation at the defaults (context refresh), issue 16
}

ON = {"enabled": True, "subject": "sks", "generic": "a"}
OFF = {"enabled": False, "subject": "sks", "generic": "a"}


# -- variants ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    key: str
    degu: dict
    no_uncond: bool = False
    source: str | None = None  # the "DeGu mask used" the generation must report

    @property
    def settings(self) -> DeGuSettings:
        return DeGuSettings(**self.degu)

    def expected_rows(self, steps: int, batch: int) -> list[int]:
        """Rows of the single UNet call of each step (batch_cond_uncond on), from DeGu's own plan."""
        settings = self.settings
        guide = Guide(settings)
        rows = []
        for step in range(steps):
            active = is_active(settings, step / steps)
            generic = active and guide.needs_context("one size", has_uncond=not self.no_uncond)
            if generic:
                guide.context_difference = torch.zeros(1)  # what the measured call stores
            rows.append((1 + (0 if self.no_uncond else 1) + int(generic)) * batch)
        return rows


EVERY_STEP = {**ON, "context_refresh": 1}  # the generic rows on every step: the cost of a refresh step
REFRESH_CURVE = (1, 2, 3, 4)  # whole generations at --refresh-steps, "context refresh every N steps"
VARIANTS = {
    v.key: v
    for v in (
        Variant("plain", OFF),
        Variant("attention", {**EVERY_STEP, "mask_source": "attention"}, source="attention"),
        Variant("difference", {**EVERY_STEP, "mask_source": "difference"}, source="difference"),
        # A constant mask of 0.5: 3 rows without capture (the memory baseline).
        Variant("full", {**EVERY_STEP, "mask_source": "full", "balance": -0.5}, source="full"),
        # The full mask at balance 0 is 1 everywhere: the generic rows are not run (2 rows).
        Variant("skip", {**EVERY_STEP, "mask_source": "full"}, source="full"),
        Variant("window", {**EVERY_STEP, "mask_source": "attention", "start": 0.0, "end": 0.5}, source="attention"),
        Variant("nu-plain", OFF, no_uncond=True),
        Variant("nu-degu", {**EVERY_STEP, "mask_source": "attention"}, no_uncond=True, source="attention"),
        *(Variant(f"refresh-{n}", {**ON, "context_refresh": n}, source="attention") for n in REFRESH_CURVE),
    )
}
MEMORY_VARIANTS = ("plain", "attention", "difference", "full", "nu-plain", "nu-degu")
CODE_VARIANTS = ("attention", "difference", "full", "nu-degu")


class BenchmarkError(RuntimeError):
    pass


# -- models -----------------------------------------------------------------------------------------
def _sd15_unet(seed: int) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def _sdxl_unet(seed: int) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def _tiny_unet(seed: int) -> torch.nn.Module:
    from tests.tiny_models import tiny_unet

    return tiny_unet(seed)


@dataclass(frozen=True)
class ModelSpec:
    key: str
    label: str
    build: Callable[[int], torch.nn.Module]
    context_dim: int
    params: float  # parameter count, for the memory check before building
    sdxl: bool = False


def _tiny_context_dim() -> int:
    from tests.tiny_models import CONTEXT_DIM

    return CONTEXT_DIM


MODELS = {
    "sd15": ModelSpec("sd15", "SD1.5-size UNet", _sd15_unet, 768, 0.86e9),
    "sdxl": ModelSpec("sdxl", "SDXL-size UNet", _sdxl_unet, 2048, 2.57e9, sdxl=True),
    "tiny": ModelSpec("tiny", "tiny UNet (tests)", _tiny_unet, _tiny_context_dim(), 1e6),
}


class SdxlDiffusionWrapper(harness.FakeDiffusionWrapper):
    """The fake's DiffusionWrapper plus SDXL's ``added_cond_kwargs`` (zero pooled text, size ids)."""

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        context = torch.cat(c_crossattn, 1)
        batch, height, width = x.shape[0], x.shape[-2] * 8, x.shape[-1] * 8
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=x.dtype, device=x.device)
        added = {
            "text_embeds": x.new_zeros(batch, 1280),
            "time_ids": ids.expand(batch, -1),
        }
        return self.diffusion_model(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


class BenchSdModel(harness.FakeSdModel):
    """``FakeSdModel`` with the UNet on ``device`` in ``dtype``; the text encoder stays on the CPU in
    float32 and its output is moved. ``apply_model`` casts the UNet's inputs to its dtype, like
    A1111's sd_hijack_unet.apply_model; the sampler keeps float32 latents."""

    def __init__(self, spec: ModelSpec, unet: torch.nn.Module, seed: int, device: torch.device, dtype: torch.dtype):
        super().__init__(unet, harness.FakeClipEmbedder(seed, dim=spec.context_dim), name=f"bench-{spec.key}-{seed}")
        if spec.sdxl:
            self.model = SdxlDiffusionWrapper(unet)
        self.model.to(device=device, dtype=dtype)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        self.bench_device, self.bench_dtype = device, dtype
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])

    def get_learned_conditioning(self, c):
        z = self.cond_stage_model(c)
        device = getattr(self, "bench_device", None)
        return z if device is None else z.to(device=device, dtype=self.bench_dtype)

    def apply_model(self, x_noisy, t, cond):
        dtype = self.bench_dtype
        if isinstance(cond, dict):
            cond = {
                key: [v.to(dtype) if torch.is_tensor(v) else v for v in value] if isinstance(value, list) else value
                for key, value in cond.items()
            }
        return super().apply_model(x_noisy.to(dtype), t.to(dtype), cond)


class _DeviceRNG:
    """The host's CPU ImageRNG, its noise moved to the model's device (float32, as A1111 samples)."""

    def __init__(self, rng: Any, device: torch.device) -> None:
        self.rng, self.device = rng, device

    def next(self) -> torch.Tensor:
        return self.rng.next().to(self.device)


class BenchProcessing(harness.FakeProcessing):
    """``FakeProcessing`` whose initial noise lives on ``bench_device`` (a no-op on the CPU)."""

    bench_device: torch.device | None = None

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        device = self.bench_device
        if device is not None and device.type != "cpu" and not isinstance(self.rng, _DeviceRNG):
            self.rng = _DeviceRNG(self.rng, device)
        return super().sample(conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts)


@dataclass
class Host:
    spec: ModelSpec
    model: BenchSdModel
    unet: torch.nn.Module
    rows: list[int]
    handle: Any

    def close(self) -> None:
        self.handle.remove()
        with harness.installed():
            if shared.sd_model is self.model:
                shared.sd_model = None
        harness.FakeProcessing.cached_c = [None, None]
        harness.FakeProcessing.cached_uc = [None, None]
        harness.FakeProcessing.cached_hr_c = [None, None]
        harness.FakeProcessing.cached_hr_uc = [None, None]


def build_host(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Host:
    """``harness.make_host`` with this benchmark's model (the harness builds only the tiny one)."""
    with harness.installed():
        harness.opts.reset()
        harness.state.reset()
        harness.sd_hijack.model_hijack.embedding_db = harness.EmbeddingDatabase()
        harness.sd_hijack.model_hijack.clear_comments()
        unet = spec.build(seed).eval().requires_grad_(False)
        model = BenchSdModel(spec, unet, seed, device, dtype).eval()
        shared.sd_model = model
        harness.script_callbacks.model_loaded_callback(model)
    rows: list[int] = []
    handle = unet.register_forward_pre_hook(lambda module, args: rows.append(int(args[0].shape[0])))
    return Host(spec, model, unet, rows, handle)


# -- timing instruments ----------------------------------------------------------------------------
def make_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class StepTimer(Script):
    """An AlwaysOn script placed after DeGu: forward hooks on this pass's CFGDenoiser time each
    denoiser call (row insertion callback + UNet + combine_denoised + DeGu's addition)."""

    args_from = args_to = 0  # takes no script arguments

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._handles: list[Any] = []
        self._start_wall = self._start_cpu = 0.0

    def title(self) -> str:
        return "DeGu benchmark step timer"

    def show(self, is_img2img: bool) -> Any:
        return AlwaysVisible

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()

    def process_before_every_sampling(self, p, *args, **kwargs):
        denoiser = p.sampler.model_wrap_cfg
        self._handles += [denoiser.register_forward_pre_hook(self._start), denoiser.register_forward_hook(self._stop)]

    def postprocess(self, p, processed, *args):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _start(self, module, args):
        self.sync()
        self._start_wall, self._start_cpu = time.perf_counter(), time.process_time()

    def _stop(self, module, args, output):
        self.sync()
        self.wall.append(time.perf_counter() - self._start_wall)
        self.cpu.append(time.process_time() - self._start_cpu)


class CodeTimer:
    """Wall time inside DeGu's own code, by wrapping (in this process only) the adapter's per-step
    functions and the attention-capture hooks with ``time.perf_counter`` (and a device sync on CUDA).

    Top-level regions (they never nest in each other; their sum is "DeGu code"):
      rows     adapter._insert_generic_rows (on_cfg_denoiser: generic rows, token indicator, begin_step)
      capture  AttentionCapture root pre-hook + every to_q / to_k hook (incl. _accumulate)
      combine  adapter._add_degu (stream composition, capture.take, Guide.delta: mask + combination)
    Nested regions (a breakdown, already inside the above): "capture: _accumulate",
    "combine: capture.take", "combine: Guide.delta", "combine: Guide.make_mask".
    """

    TOP = ("rows", "capture", "combine")

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[Any, str, Any]] = []

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()

    @property
    def total(self) -> float:
        return sum(self.totals.get(key, 0.0) for key in self.TOP)

    def _timed(self, key: str, fn: Callable) -> Callable:
        sync, totals, calls = self.sync, self.totals, self.calls

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                totals[key] += time.perf_counter() - start
                calls[key] += 1

        return wrapper

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    def install(self) -> None:
        timer = self
        self._patch(adapter, "_insert_generic_rows", self._timed("rows", adapter._insert_generic_rows))
        self._patch(adapter, "_add_degu", self._timed("combine", adapter._add_degu))
        self._patch(Guide, "delta", self._timed("combine: Guide.delta", Guide.delta))
        self._patch(Guide, "make_mask", self._timed("combine: Guide.make_mask", Guide.make_mask))
        capture = AttentionCapture
        self._patch(capture, "_on_root_call", self._timed("capture", capture._on_root_call))
        self._patch(capture, "_accumulate", self._timed("capture: _accumulate", capture._accumulate))
        self._patch(capture, "take", self._timed("combine: capture.take", capture.take))
        make_q, make_k = capture._make_q_hook, capture._make_k_hook

        def timed_q(self, attn):
            return timer._timed("capture", make_q(self, attn))

        def timed_k(self, attn):
            return timer._timed("capture", make_k(self, attn))

        self._patch(capture, "_make_q_hook", timed_q)
        self._patch(capture, "_make_k_hook", timed_k)

    def uninstall(self) -> None:
        while self._undo:
            owner, name, value = self._undo.pop()
            setattr(owner, name, value)

    @contextlib.contextmanager
    def installed(self) -> Iterator[CodeTimer]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()


# -- one generation ----------------------------------------------------------------------------------
@dataclass
class GenResult:
    step_wall: list[float]
    step_cpu: list[float]
    gen_wall: float
    code: dict[str, float] | None = None
    code_calls: dict[str, int] | None = None
    gen_cpu: float = 0.0  # process CPU time: on a shared CPU it moves less with other jobs than wall time


def generate(
    host: Host,
    variant: Variant,
    latent: int,
    steps: int,
    batch: int,
    device: torch.device,
    timer: StepTimer,
    code: CodeTimer | None = None,
) -> GenResult:
    """One txt2img through the fake host; checks that DeGu really ran as the variant says."""
    script = make_script()
    p = BenchProcessing(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        width=latent * harness.OPT_F,
        height=latent * harness.OPT_F,
        steps=steps,
        cfg_scale=CFG_SCALE,
        batch_size=batch,
        scripts=[script, timer],
        script_args=script_args(**variant.degu),
    )
    p.bench_device = device
    timer.reset()
    if code is not None:
        code.reset()
    host.rows.clear()
    shared.opts.skip_early_cond = 1.0 if variant.no_uncond else 0.0
    try:
        timer.sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        processed = harness.txt2img(p)
        timer.sync()
        gen_wall = time.perf_counter() - start
        gen_cpu = time.process_time() - cpu_start
    finally:
        shared.opts.skip_early_cond = 0.0

    notes = [c for c in p.comments if c.startswith("DeGu")]
    if notes:
        raise BenchmarkError(f"{variant.key}: DeGu reported {notes}")
    used = p.extra_generation_params.get("DeGu mask used")
    if used != variant.source:
        raise BenchmarkError(f"{variant.key}: 'DeGu mask used' is {used!r}, expected {variant.source!r}")
    expected = variant.expected_rows(steps, batch)
    if host.rows != expected:
        raise BenchmarkError(f"{variant.key}: UNet rows per call {host.rows}, expected {expected}")
    if len(timer.wall) != steps:
        raise BenchmarkError(f"{variant.key}: timed {len(timer.wall)} denoiser calls, expected {steps}")
    if not torch.isfinite(processed.latents).all():
        raise BenchmarkError(f"{variant.key}: non-finite latents")
    return GenResult(
        list(timer.wall),
        list(timer.cpu),
        gen_wall,
        dict(code.totals) if code is not None else None,
        dict(code.calls) if code is not None else None,
        gen_cpu,
    )


# -- memory ----------------------------------------------------------------------------------------
def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM (peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def measure_memory(
    host: Host, variant: Variant, latent: int, steps: int, batch: int, device: torch.device
) -> dict[str, Any]:
    """Peak memory of one generation of ``variant`` (CPU: peak RSS; CUDA: max_memory_allocated)."""
    timer = StepTimer(make_sync(device))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        generate(host, variant, latent, steps, batch, device, timer)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mb": peak / 2**20, "delta_mb": (peak - base) / 2**20, "method": "cuda.max_memory_allocated"}
    base_kb = _status_kb("VmRSS")
    if base_kb is not None and _reset_peak_rss():
        generate(host, variant, latent, steps, batch, device, timer)
        peak_kb = _status_kb("VmHWM")
        return {"peak_mb": peak_kb / 1024, "delta_mb": (peak_kb - base_kb) / 1024, "method": "VmHWM after clear_refs"}
    import resource

    generate(host, variant, latent, steps, batch, device, timer)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": peak_kb / 1024, "delta_mb": None, "method": "ru_maxrss (includes model build)"}


def memory_child(payload: str) -> None:
    """Entry point of a memory subprocess: build the host, one generation, print the peak."""
    job = json.loads(payload)
    _set_threads(job["threads"])
    device, dtype = torch.device(job["device"]), getattr(torch, job["dtype"])
    host = build_host(MODELS[job["model"]], device, dtype)
    result = measure_memory(host, VARIANTS[job["variant"]], job["latent"], job["steps"], job["batch"], device)
    print(MEMORY_TAG + json.dumps(result), flush=True)


def memory_in_subprocess(job: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    command = [sys.executable, "-m", "lab.step_cost", "--memory-child", json.dumps(job)]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in done.stdout.splitlines():
        if line.startswith(MEMORY_TAG):
            return json.loads(line[len(MEMORY_TAG) :]), None
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return None, f"exit {done.returncode}: {' | '.join(tail)}"


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    kb = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    kb = int(line.split()[1])
    except OSError:
        return None
    return None if kb is None else kb * 1024


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Cell:
    """Everything measured for one (model, latent size)."""

    steps_wall: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    steps_cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    gens: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    code: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    code_steps: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    code_step_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    code_instrumented: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    memory: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    memory_errors: dict[str, str] = field(default_factory=dict)
    curve: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # whole generations
    curve_cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def median(self, variant: str, cpu: bool = False) -> float | None:
        values = (self.steps_cpu if cpu else self.steps_wall).get(variant)
        return statistics.median(values) if values else None

    def gen_median(self, variant: str) -> float | None:
        values = self.gens.get(variant)
        return statistics.median(values) if values else None

    def code_share(self, variant: str) -> float | None:
        total_steps = self.code_steps.get(variant)
        if not total_steps:
            return None
        return sum(self.code[variant].get(key, 0.0) for key in CodeTimer.TOP) / total_steps


def _set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def _log(message: str) -> None:
    print(f"[step_cost {time.strftime('%H:%M:%S')}] {message}", flush=True)


def time_cell(host: Host, latent: int, args: argparse.Namespace, device: torch.device, cell: Cell) -> None:
    sync = make_sync(device)
    timer = StepTimer(sync)
    order = ["plain", "attention", "difference", "full", "skip", "window", "nu-plain", "nu-degu"]
    code = CodeTimer(sync)
    # On the CPU the wrappers cost microseconds per call against seconds per step: they stay on in
    # the timed rounds. On CUDA they synchronise, so they only run in an extra instrumented round.
    instrument_inline = device.type == "cpu"

    _log(f"{host.spec.key} {latent}x{latent}: warm-up ({args.warmup_steps} step(s) per variant)")
    for key in order:
        generate(host, VARIANTS[key], latent, max(args.warmup_steps, 1), args.batch, device, timer)

    for repeat in range(args.repeats):
        round_order = order if repeat % 2 == 0 else order[::-1]
        for key in round_order:
            variant = VARIANTS[key]
            with code.installed() if instrument_inline else contextlib.nullcontext():
                result = generate(host, variant, latent, args.steps, args.batch, device, timer, code)
            cell.gens[key].append(result.gen_wall)
            if key != "window":
                cell.steps_wall[key] += result.step_wall
                cell.steps_cpu[key] += result.step_cpu
            if instrument_inline and key in CODE_VARIANTS:
                _add_code(cell, key, result)
            _log(
                f"{host.spec.key} {latent}x{latent} round {repeat + 1}/{args.repeats} {key:<10} "
                f"step median {statistics.median(result.step_wall) * 1e3:9.1f} ms, "
                f"generation {result.gen_wall:7.2f} s"
            )

    if not instrument_inline:
        for key in CODE_VARIANTS:
            with code.installed():
                result = generate(host, VARIANTS[key], latent, args.steps, args.batch, device, timer, code)
            _add_code(cell, key, result)
            cell.code_instrumented[key] += result.step_wall


def time_refresh_curve(host: Host, latent: int, args: argparse.Namespace, device: torch.device, cell: Cell) -> None:
    """Whole generations of ``--refresh-steps`` steps: plain CFG, then DeGu at its defaults with
    the context refreshed every N steps (N = 1: every step), interleaved, reversed on odd rounds."""
    timer = StepTimer(make_sync(device))
    order = ["plain", *(f"refresh-{n}" for n in REFRESH_CURVE)]
    for repeat in range(args.refresh_repeats):
        for key in order if repeat % 2 == 0 else order[::-1]:
            result = generate(host, VARIANTS[key], latent, args.refresh_steps, args.batch, device, timer)
            cell.curve[key].append(result.gen_wall)
            cell.curve_cpu[key].append(result.gen_cpu)
            _log(f"{host.spec.key} {latent}x{latent} curve {repeat + 1}/{args.refresh_repeats} {key:<10} "
                 f"generation {result.gen_wall:7.2f} s")


def _add_code(cell: Cell, key: str, result: GenResult) -> None:
    for name, seconds in (result.code or {}).items():
        cell.code[key][name] += seconds
    cell.code_steps[key] += sum(result.step_wall)
    cell.code_step_count[key] += len(result.step_wall)


def memory_cell(spec: ModelSpec, latent: int, args: argparse.Namespace, device: torch.device, cell: Cell) -> None:
    for key in MEMORY_VARIANTS:
        job = {
            "model": spec.key,
            "latent": latent,
            "variant": key,
            "steps": args.memory_steps,
            "batch": args.batch,
            "device": str(device),
            "dtype": args.dtype,
            "threads": args.threads,
        }
        result, error = memory_in_subprocess(job, timeout=args.memory_timeout)
        cell.memory[key] = result
        if error:
            cell.memory_errors[key] = error
        shown = f"peak {result['peak_mb']:.0f} MB" if result else f"failed ({error})"
        _log(f"{spec.key} {latent}x{latent} memory {key:<10} {shown}")


def memory_cell_inprocess(host: Host, latent: int, args: argparse.Namespace, device: torch.device, cell: Cell) -> None:
    for key in MEMORY_VARIANTS:
        cell.memory[key] = measure_memory(host, VARIANTS[key], latent, args.memory_steps, args.batch, device)


def profile_degu_step(host: Host, latent: int, args: argparse.Namespace, device: torch.device) -> None:
    """torch.profiler top ops and cProfile of lib_degu for one attention-mask generation."""
    timer = StepTimer(make_sync(device))
    variant = VARIANTS["attention"]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        generate(host, variant, latent, args.profile_steps, args.batch, device, timer)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n== torch.profiler: {host.spec.key} {latent}x{latent}, attention mask, {args.profile_steps} steps ==")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows))

    profiler = cProfile.Profile()
    profiler.enable()
    generate(host, variant, latent, args.profile_steps, args.batch, device, timer)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(r"lib_degu|a1111\.py|attention\.py|mask\.py|step\.py|guidance\.py", args.profile_rows)
    print(f"== cProfile (cumulative), lib_degu functions, {args.profile_steps} steps ==")
    print(out.getvalue())


# -- output ----------------------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}×"


def _fmt_share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _fmt_mem(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    delta = entry.get("delta_mb")
    return f"{entry['peak_mb']:.0f}" + ("" if delta is None else f" (+{delta:.0f})")


def _mem_vs(entry: dict[str, Any] | None, base: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(peak / baseline peak - 1, delta / baseline delta - 1)."""
    if not entry or not base:
        return None, None
    total = entry["peak_mb"] / base["peak_mb"] - 1
    if entry.get("delta_mb") is None or not base.get("delta_mb"):
        return total, None
    return total, entry["delta_mb"] / base["delta_mb"] - 1


def _fmt_vs(values: tuple[float | None, float | None]) -> str:
    total, delta = values
    if total is None:
        return "—"
    return f"{total * 100:+.2f}%" + ("" if delta is None else f" (Δ {delta * 100:+.1f}%)")


def _verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= limit else "MISS"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


HEADER = [
    "model",
    "resolution",
    "batch",
    "variant",
    "plain-CFG ms",
    "DeGu ms",
    "ratio",
    "target",
    "ratio (CPU time)",
    "DeGu-code share",
    "target",
    "peak MB plain (Δ)",
    "peak MB DeGu (Δ)",
    "DeGu vs 3-row peak",
    "target",
]


@dataclass
class Check:
    name: str
    value: float | None
    limit: float
    kind: str  # ratio, share or memory

    def line(self) -> str:
        if self.kind == "ratio":
            shown, limit = _fmt_ratio(self.value), f"≤{self.limit:.2f}×"
        elif self.kind == "share":
            shown, limit = _fmt_share(self.value), f"≤{self.limit * 100:.0f}%"
        else:
            shown = "—" if self.value is None else f"{self.value * 100:+.2f}%"
            limit = f"≤+{self.limit * 100:.0f}%"
        return f"  {_verdict(self.value, self.limit):<4}  {self.name}: {shown} (target {limit})"


def _step_row(
    cell: Cell,
    prefix: list[str],
    variant_label: str,
    base: str,
    key: str,
    *,
    target: float | None,
    cpu_times: bool,
    memory_baseline: str | None,
    share_target: bool = True,
) -> tuple[list[str], float | None, float | None, tuple[float | None, float | None]]:
    ratio = _ratio(cell.median(key), cell.median(base))
    cpu_ratio = _ratio(cell.median(key, cpu=True), cell.median(base, cpu=True)) if cpu_times else None
    share = cell.code_share(key)
    vs = _mem_vs(cell.memory.get(key), cell.memory.get(memory_baseline)) if memory_baseline else (None, None)
    row = [
        *prefix,
        variant_label,
        _ms(cell.median(base)),
        _ms(cell.median(key)),
        _fmt_ratio(ratio),
        "—" if target is None else f"≤{target:.2f}×",
        _fmt_ratio(cpu_ratio),
        _fmt_share(share),
        f"≤{TARGETS['code_share'] * 100:.0f}%" if share is not None and share_target else "—",
        _fmt_mem(cell.memory.get(base)),
        _fmt_mem(cell.memory.get(key)),
        _fmt_vs(vs),
        f"≤+{TARGETS['memory'] * 100:.0f}%" if memory_baseline else "—",
    ]
    return row, ratio, share, vs


def report(cells: dict[tuple[str, int], Cell], args: argparse.Namespace, device: torch.device) -> float | None:
    rows: list[list[str]] = []
    checks: list[Check] = []
    cpu_times = device.type == "cpu"
    for (model_key, latent), cell in cells.items():
        prefix = [MODELS[model_key].label, f"{latent}x{latent} ({latent * harness.OPT_F}px)", str(args.batch)]
        tag = f"{model_key} {latent}x{latent}"
        common = {"cpu_times": cpu_times}
        per_step = [("attention", "attention mask"), ("difference", "difference mask")]
        for key, label in per_step if cell.median("attention") is not None else []:
            row, ratio, share, vs = _step_row(
                cell, prefix, label, "plain", key, target=TARGETS[key], memory_baseline="full", **common
            )
            rows.append(row)
            checks += [
                Check(f"{tag} {key} step ratio", ratio, TARGETS[key], "ratio"),
                Check(f"{tag} {key} DeGu-code share of the step", share, TARGETS["code_share"], "share"),
                Check(f"{tag} {key} peak memory vs 3-row batch without capture", vs[0], TARGETS["memory"], "memory"),
            ]
        if cell.median("full") is not None:
            row, *_ = _step_row(
                cell,
                prefix,
                "full mask, balance -0.5 (3 rows, no capture)",
                "plain",
                "full",
                target=None,
                memory_baseline=None,
                share_target=False,
                **common,
            )
            rows.append(row)
            row, ratio, _, _ = _step_row(
                cell,
                prefix,
                "full mask, balance 0: M = 1, generic rows skipped",
                "plain",
                "skip",
                target=TARGETS["skip"],
                memory_baseline=None,
                share_target=False,
                **common,
            )
            rows.append(row)
            checks.append(Check(f"{tag} full-mask skip step ratio", ratio, TARGETS["skip"], "ratio"))
        for n in REFRESH_CURVE:
            key = f"refresh-{n}"
            if not cell.curve.get(key):
                continue
            ratio = _ratio(statistics.median(cell.curve[key]), statistics.median(cell.curve["plain"]))
            cpu_ratio = _ratio(statistics.median(cell.curve_cpu[key]), statistics.median(cell.curve_cpu["plain"]))
            default = n == DeGuSettings().context_refresh
            rows.append(
                [
                    *prefix,
                    f"context refresh every {n}{' (default)' if default else ''}: whole generation of "
                    f"{args.refresh_steps} steps (ms)",
                    _ms(statistics.median(cell.curve["plain"])),
                    _ms(statistics.median(cell.curve[key])),
                    _fmt_ratio(ratio),
                    f"≤{TARGETS['refresh_default']:.2f}×" if default else "—",
                    _fmt_ratio(cpu_ratio) if cpu_times else "—",
                    *(["—"] * 4),
                    "(= attention)",
                    "—",
                ][: len(HEADER)]
            )
            if default:
                target = TARGETS["refresh_default"]
                checks.append(Check(f"{tag} defaults whole-generation ratio", ratio, target, "ratio"))
        if cell.median("nu-degu") is None:
            continue
        row, ratio, _, _ = _step_row(
            cell,
            prefix,
            "no-uncond: 1 row vs 2 rows (attention)",
            "nu-plain",
            "nu-degu",
            target=TARGETS["no_uncond"],
            memory_baseline=None,
            **common,
        )
        rows.append(row)
        checks.append(Check(f"{tag} no-uncond step ratio", ratio, TARGETS["no_uncond"], "ratio"))
        window = _ratio(cell.gen_median("window"), cell.gen_median("plain"))
        rows.append(
            [
                *prefix,
                f"window 0–50%: whole generation of {args.steps} steps (ms)",
                _ms(cell.gen_median("plain")),
                _ms(cell.gen_median("window")),
                _fmt_ratio(window),
                f"≤{TARGETS['window']:.2f}×",
                *(["—"] * 5),
                "(= attention)",
                "—",
            ][: len(HEADER)]
        )
        checks.append(Check(f"{tag} window 0-50% whole-generation ratio", window, TARGETS["window"], "ratio"))

    print()
    print("== DeGu step cost vs plain CFG (simulated A1111 1.10 host, CFGDenoiser path) ==")
    print_table(rows, HEADER)

    print("\n== DeGu-code breakdown (ms per DeGu step; 'x: y' rows are already inside x) ==")
    breakdown_rows = []
    for (model_key, latent), cell in cells.items():
        for key in CODE_VARIANTS:
            count = cell.code_step_count.get(key)
            if not count:
                continue
            names = sorted(cell.code[key])
            parts = ", ".join(f"{name} {cell.code[key][name] / count * 1e3:.2f}" for name in names)
            step = cell.code_steps[key] / count
            breakdown_rows.append([f"{model_key} {latent}x{latent}", key, f"{step * 1e3:.1f}", parts or "—"])
    if breakdown_rows:
        print_table(breakdown_rows, ["cell", "variant", "step ms (instrumented)", "DeGu code, ms per step"])

    print("\n== targets ==")
    for check in checks:
        print(check.line())

    errors = {f"{m} {s} {k}": e for (m, s), cell in cells.items() for k, e in cell.memory_errors.items()}
    if errors:
        print(f"\nmemory measurement failures: {errors}")

    primary = args.models[0]
    sizes = [latent for (model_key, latent) in cells if model_key == primary]
    if not sizes:
        return None
    largest = cells[primary, max(sizes)]
    if args.refresh_only:
        default = f"refresh-{DeGuSettings().context_refresh}"
        return _ratio(statistics.median(largest.curve[default]), statistics.median(largest.curve["plain"]))
    return _ratio(largest.median("attention"), largest.median("plain"))


def _revision() -> str:
    """The commit measured, and whether DeGu's code differs from it (the tree is edited concurrently)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "lib_degu", "scripts"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = sorted({p for p in dirty if "/" in p or p.endswith(".py")})
    return f"commit {head or '?'}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def print_method(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, revision: str) -> None:
    memory = {
        "subprocess": "one subprocess per variant: build the host, then one generation of "
        f"{args.memory_steps} step(s); "
        + (
            "torch.cuda.max_memory_allocated after reset_peak_memory_stats (Δ: over memory_allocated before)"
            if device.type == "cuda"
            else "CPU peak = VmHWM after resetting it with /proc/self/clear_refs once the model is built "
            "(Δ: over VmRSS just before the generation; weights are in the peak, not in Δ)"
        ),
        "inprocess": "in this process, after the timing rounds (VmHWM reset via clear_refs / cuda peak stats)",
        "off": "not measured",
    }[args.memory]
    print("\n== method ==")
    print(f"code: {revision} (at the start; lib_degu is imported once, at the start)")
    print(
        f"device {device}, UNet dtype {str(dtype).replace('torch.', '')}, torch {torch.__version__}, "
        f"intra-op threads {torch.get_num_threads()}, batch {args.batch}, sampler Euler, CFG {CFG_SCALE}, "
        f"seed {SEED}, prompt {PROMPT!r}, negative {NEGATIVE!r}, DeGu subject 'sks' -> 'a'"
    )
    print(
        f"step time: forward pre/post hooks on each pass's CFGDenoiser (an AlwaysOn script after DeGu's), "
        f"{'with torch.cuda.synchronize, ' if device.type == 'cuda' else ''}"
        f"median over {args.repeats} round(s) x {args.steps} steps per variant after a warm-up generation of "
        f"{args.warmup_steps} step(s) per variant; variants interleaved, order reversed on odd rounds"
    )
    print(
        "DeGu code: perf_counter wrappers on adapter._insert_generic_rows, adapter._add_degu, the attention "
        "capture hooks (root pre-hook, to_q/to_k hooks), share = their sum / sum of the DeGu step times "
        + ("(same timed rounds)" if device.type == "cpu" else "(separate instrumented round, synchronised)")
    )
    print(f"memory: {memory}")
    print(
        "no-uncond: A1111's 'Skip Early CFG' = 1.0 drops the uncond rows on every step: plain = 1 UNet row "
        "(Flux-style single evaluation), DeGu = 2 rows (s, g) and its no-uncond formula, through the same adapter"
    )
    print("window: DeGu attention mask with start=0, end=0.5; whole txt2img wall time (conds, DeGu setup, sampling)")
    print(
        f"context refresh curve: whole txt2img wall time of {args.refresh_steps} steps, DeGu at its defaults "
        f"(attention mask) with 'context refresh every N steps' = {', '.join(map(str, REFRESH_CURVE))}, "
        f"{args.refresh_repeats} round(s), interleaved with plain CFG"
    )


# -- main ------------------------------------------------------------------------------------------
# -- DiT rows: the attention capture's share of a joint-attention DiT step -----------------------------
@dataclass(frozen=True)
class DitSpec:
    """A DiT at its real width and text length, at fewer blocks; the capture reads the same share of
    them as on the full model."""

    key: str
    label: str
    width_depth: int  # SD3.5: width 64 * this (38 = large); Flux: 3072
    blocks: int  # joint blocks built (SD3/SD3.5) / double blocks (Flux, with 3x as many single blocks)
    full_blocks: str
    text_tokens: int
    rows: int  # rows of the DeGu step's model call: SD3.5 prompt + generic + uncond, Flux dev prompt + generic
    read_share: float  # the share of the full model's blocks the capture reads (mmdit_blocks: 1 of the 4 built)
    # (Flux: 15 of 57 since the capture reads the middle quarter of its blocks; every block before)


DITS = {
    "sd3": DitSpec("sd3", "SD3-medium proportions (A1111)", 24, 4, "24 joint", 154, 3, 6 / 24),
    "sd35": DitSpec("sd35", "SD3.5-large proportions (Forge)", 38, 4, "38 joint", 77 + 256, 3, 10 / 38),
    "flux": DitSpec("flux", "Flux-dev proportions (Forge)", 3072, 1, "19 double + 38 single", 256, 2, 15 / 57),
    "sd35-tiny": DitSpec("sd35-tiny", "tiny SD3.5 (smoke)", 4, 4, "-", 77 + 16, 3, 1 / 4),
    "flux-tiny": DitSpec("flux-tiny", "tiny Flux (smoke)", 64, 1, "-", 16, 2, 1 / 4),
}


def _build_dit(spec: DitSpec, seed: int = 0) -> tuple[torch.nn.Module, Any, Callable[..., Any]]:
    """(model, capture factory, call(x, t, context) -> output) for one DiT spec, float32 on the CPU."""
    from lib_degu.attention import JointAttentionCapture, MMDiTCapture
    from tests.fake_forge import harness as forge_harness

    torch.manual_seed(seed)
    with forge_harness.installed():
        if spec.key.startswith("sd3"):  # A1111's SD3 MMDiT computes as MMDiTX without q/k norm
            from backend.nn.mmditx import MMDiTX

            width = 64 * spec.width_depth
            model = MMDiTX(depth=spec.blocks, width_depth=spec.width_depth, adm_in_channels=2048,
                           pos_embed_max_size=96, qk_norm=None if spec.key == "sd3" else "rms",
                           context_embedder_config={"target": "torch.nn.Linear",
                                                    "params": {"in_features": 4096, "out_features": width}})
            y = torch.zeros(spec.rows, 2048)

            def call(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> Any:
                return model(x, t, y=y, context=context)

            return model.eval().requires_grad_(False), lambda: MMDiTCapture(model), call
        from backend.nn import flux as flux_module
        from backend.nn.flux import IntegratedFluxTransformer2DModel

        heads = max(1, spec.width_depth // 128)
        model = IntegratedFluxTransformer2DModel(
            in_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=spec.width_depth, mlp_ratio=4.0,
            num_heads=heads, depth=spec.blocks, depth_single_blocks=3 * spec.blocks,
            axes_dim=[16, 56, 56] if spec.width_depth == 3072 else [8, 28, 28], theta=10000, qkv_bias=True,
            guidance_embed=True,
        )
        y, guidance = torch.zeros(spec.rows, 768), torch.full((spec.rows,), 3.5)

        def call(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> Any:
            return model(x, t, context=context, y=y, guidance=guidance)

        return model.eval().requires_grad_(False), lambda: JointAttentionCapture(flux_module, root=model), call


def dit_flops_share(spec: DitSpec, latent: int) -> float:
    """The capture's FLOPs over the step's (matrix products only): per block and row, linear layers
    24 * L * D^2 (qkv 3, projection 1, MLP 8 D^2 per token, 2 FLOPs each), attention 4 * L^2 * D; the
    capture adds, on one row of ``rows`` and in the blocks it reads, 4 * I * L * D (image queries)."""
    width = 64 * spec.width_depth if spec.key.startswith("sd3") else spec.width_depth
    image = (latent // 2) ** 2
    length = image + spec.text_tokens
    block_row = 24 * length * width**2 + 4 * length**2 * width
    return spec.read_share * 4 * image * length * width / (spec.rows * block_row)


def time_dit(spec: DitSpec, latent: int, repeats: int) -> dict[str, float]:
    """Median ms of the DeGu step's model call without and with the capture (interleaved rounds)."""
    from lib_degu.attention import token_indicator

    model, make_capture, call = _build_dit(spec)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(spec.rows, 16, latent, latent, generator=gen)
    t = torch.full((spec.rows,), 0.5 if spec.key.startswith("flux") else 500.0)
    context = torch.randn(spec.rows, spec.text_tokens, 4096, generator=gen)
    weights = token_indicator([[4, 5]], spec.text_tokens)
    jointly = not spec.key.startswith("sd3")

    def plain() -> None:
        with torch.no_grad():
            call(x, t, context)

    inside: list[float] = []  # seconds in the capture's own kernel runs, per captured call

    def captured() -> None:
        capture = make_capture()
        measure = capture._measure

        def timed(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            measure(*args, **kwargs)
            inside[-1] += time.perf_counter() - start

        capture._measure = timed
        inside.append(0.0)
        with torch.no_grad(), capture:
            capture.begin_step([0], weights)
            if jointly:
                capture.call([(0, 0)], spec.text_tokens, (latent, latent), lambda: call(x, t, context))
            else:
                call(x, t, context)
            if capture.take() is None:
                raise BenchmarkError(f"{spec.label}: the capture read nothing")

    times: dict[str, list[float]] = {"plain": [], "capture": []}
    plain(), captured()  # warm-up
    for round_ in range(repeats):
        order = [("plain", plain), ("capture", captured)]
        for key, fn in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    del model
    gc.collect()
    result = {key: statistics.median(values) * 1000 for key, values in times.items()}
    result["inside"] = statistics.median(inside[1:]) * 1000  # after the warm-up
    return result


def _built(spec: DitSpec) -> str:
    if spec.key.startswith("flux"):
        return f"{spec.blocks} double + {3 * spec.blocks} single of {spec.full_blocks}"
    return f"{spec.blocks} of {spec.full_blocks}"


def report_dits(args: argparse.Namespace) -> None:
    rows = []
    for key in args.dits:
        spec = DITS[key]
        for latent in args.dit_sizes:
            _log(f"DiT {spec.label} at {latent}x{latent}")
            ms = time_dit(spec, latent, args.dit_repeats)
            share = ms["inside"] / ms["plain"]
            estimate = dit_flops_share(spec, 128)
            rows.append([
                spec.label, _built(spec), f"{latent}x{latent} ({latent * 8}px)",
                str(spec.rows), f"{ms['plain']:.1f}", f"{ms['capture']:.1f}", f"{ms['inside']:.1f}",
                f"{100 * share:.2f}%", f"{100 * dit_flops_share(spec, latent):.2f}%", f"{100 * estimate:.2f}%",
                _verdict(max(share, estimate), 0.03),
            ])
    print("\n== DiT step: the DeGu step's one model call without and with the attention capture (CPU, float32) ==")
    print("capture ms: the capture's own kernel runs timed inside the captured call; share = that / call ms.")
    print("FLOP est.: matrix products of the capture over the step's, here and at 1024 px (128x128 latent).")
    print_table(rows, ["model", "blocks built", "latent", "rows", "call ms", "with capture ms", "capture ms",
                       "capture share", "FLOP est. here", "FLOP est. 1024px", "target <=3% (both)"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.step_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--models", default=None, help="comma list of sd15, sdxl, tiny (default sd15,sdxl; none)")
    parser.add_argument("--sizes", default=None, help="latent sizes, comma list (default 32,64)")
    parser.add_argument("--sdxl-size", type=int, default=32, help="the one latent size the SDXL-size UNet runs at")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per timed generation (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 3)")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU, 0 = torch's default")
    parser.add_argument("--memory", choices=("subprocess", "inprocess", "off"), default=None)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-timeout", type=float, default=1800.0)
    parser.add_argument("--profile", action="store_true", help="torch.profiler + cProfile of a DeGu attention step")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="tiny models, small sizes, one round: a smoke run")
    parser.add_argument("--refresh-steps", type=int, default=None,
                        help="steps of the whole generations of the context-refresh curve (default 20)")
    parser.add_argument("--refresh-repeats", type=int, default=1, help="rounds of the context-refresh curve")
    parser.add_argument("--refresh-only", action="store_true",
                        help="only the context-refresh curve (whole generations); ratio= is then the defaults'")
    parser.add_argument("--no-refresh-curve", action="store_true", help="skip the context-refresh curve")
    parser.add_argument("--dits", default=None, help="comma list of sd3, sd35, flux (default all; 'none' to skip)")
    parser.add_argument("--dit-sizes", default=None, help="DiT latent sizes, comma list (default 32)")
    parser.add_argument("--dit-repeats", type=int, default=None, help="timed rounds per DiT variant (default 5)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    quick = args.quick
    models = args.models or ("tiny" if quick else "sd15,sdxl")
    args.models = [] if models == "none" else models.split(",")  # "none": the DiT rows only
    args.sizes = [int(s) for s in (args.sizes or ("8,16" if quick else "32,64")).split(",")]
    args.steps = args.steps or (2 if quick else 4)
    args.refresh_steps = args.refresh_steps or (6 if quick else 20)
    args.repeats = args.repeats or (1 if quick else 3)
    args.memory = args.memory or ("inprocess" if quick else "subprocess")
    args.threads = (1 if args.threads is None else args.threads) if args.device == "cpu" else 0
    dits = args.dits or ("sd35-tiny,flux-tiny" if quick else "sd3,sd35,flux")
    args.dits = [] if dits == "none" else dits.split(",")
    args.dit_sizes = [int(s) for s in (args.dit_sizes or ("8" if quick else "32")).split(",")]
    args.dit_repeats = args.dit_repeats or (1 if quick else 5)
    for name in args.dits:
        if name not in DITS:
            parser.error(f"unknown DiT {name!r} (choose from {', '.join(DITS)})")
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    if args.steps < 2 or args.steps % 2:
        parser.error("--steps must be even and >= 2 (the 0-50% window is then exactly half the steps)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return 0

    _set_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if device.type == "cpu" and dtype != torch.float32:
        print(f"note: {args.dtype} UNet on the CPU is slow and not what a CPU user runs", flush=True)

    revision = _revision()
    cells: dict[tuple[str, int], Cell] = {}
    notes: list[str] = []
    for model_key in args.models:
        spec = MODELS[model_key]
        sizes = [args.sdxl_size] if spec.sdxl else args.sizes
        bytes_per_param = torch.finfo(dtype).bits // 8
        needed = spec.params * bytes_per_param * 1.25 + 3 * 2**30  # weights, activations, room for others
        available = _available_bytes(device)
        if available is not None and available < needed:
            note = (
                f"{spec.label} skipped: needs about {needed / 2**30:.1f} GiB, "
                f"{available / 2**30:.1f} GiB available on {device}"
            )
            print(f"note: {note}", flush=True)
            notes.append(note)
            continue
        if args.memory == "subprocess" and not args.refresh_only:
            for latent in sizes:
                memory_cell(spec, latent, args, device, cells.setdefault((model_key, latent), Cell()))
        _log(f"building {spec.label} on {device} ({args.dtype})")
        host = build_host(spec, device, dtype)
        try:
            for latent in sizes:
                cell = cells.setdefault((model_key, latent), Cell())
                if not args.refresh_only:
                    time_cell(host, latent, args, device, cell)
                    if args.memory == "inprocess":
                        memory_cell_inprocess(host, latent, args, device, cell)
                if not args.no_refresh_curve:
                    time_refresh_curve(host, latent, args, device, cell)
            if args.profile:
                profile_degu_step(host, max(sizes), args, device)
        finally:
            host.close()
            del host
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print_method(args, device, dtype, revision)
    for note in notes:
        print(f"note: {note}")
    ratio = report(cells, args, device) if args.models else None
    if args.dits:
        report_dits(args)
    if ratio is None:
        print("ratio=nan")
        return 0 if not args.models else 1
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
