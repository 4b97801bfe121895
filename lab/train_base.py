"""Train the base miniature, deterministically, on the CPU (from scratch, or continuing one).

    python -m lab.train_base            # the committed lab/models/base.safetensors, both phases
    python -m lab.train_base --init lab/models/base.safetensors --steps 1500 --lr 3e-4 \
        --context-free 0.3 --seed 1     # one phase continuing a model (the second phase alone)
    python -m lab.train_base --init lab/models/base.safetensors --steps 1500 --lr 3e-4 \
        --context-free 0.3 --seed 1 --grounding 0.1 --out /tmp/grounded.safetensors
                                        # the same, each object word's attention drawn onto its object
                                        # (README, "What limits this lab": measured, not adopted)

Scenes are drawn fresh every step (no data set on disk). The subjects' appearance combinations
(``lab.subjects.EXCLUDED``) never appear, so personalisation has something new to learn.
Captions are dropped 10 % of the time (the empty prompt), as for classifier-free guidance, and a
quarter of the objects are named by their shape alone. From scratch, the first phase (8,800 steps)
is followed by a second one (``SECOND_PHASE``, 1,500 steps) that also leaves the background unsaid
in 30 % of the captions (``CONTEXT_FREE``), so that a subject taught from "a sks circle" comes back
in longer prompts (lab/models/README.md). The second phase starts from the first one's saved fp16
weights, exactly as when the two ran as separate commands, so both ways give the same file.
Weights are an exponential moving average of the trained ones (sharper samples at this budget).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lab import model as lab_model
from lab import scenes
from lab.subjects import EXCLUDED
from lib_degu.attention import attention_probs, find_cross_attention

EMPTY_PROMPT = ""
VAGUE = 0.25
# The committed base's second phase: this share of captions leave the background unsaid.
CONTEXT_FREE = 0.3


@dataclasses.dataclass(frozen=True)
class Phase:
    """One run of the training loop: its length, peak learning rate, seed (of the scenes, the noise and,
    from scratch, the weights), share of captions that leave the background unsaid and of scenes with
    two objects."""

    steps: int
    lr: float
    seed: int
    context_free: float = 0.0
    two_objects: float = scenes.TWO_OBJECTS  # share of scenes with two objects
    grounding: float = 0.0  # weight of the grounding loss (0: the committed base, plain denoising)


# What follows a first phase from scratch (the committed base: 10.9 min).
SECOND_PHASE = Phase(steps=1500, lr=3e-4, seed=1, context_free=CONTEXT_FREE)


@dataclasses.dataclass
class Batch:
    """Training images as latents, their captions and, per caption token, the region it describes."""

    latents: torch.Tensor
    captions: list[str]
    # (size, CONTEXT_LENGTH, 32, 32): 1 where the object a token describes lies; 0 for every other token
    # (and every token of a dropped caption).
    token_regions: torch.Tensor


def draw_batch(
    rng: np.random.Generator, size: int, drop: float = 0.1, context_free: float = 0.0,
    two_objects: float = scenes.TWO_OBJECTS,
) -> Batch:
    images, captions = [], []
    token_regions = torch.zeros((size, lab_model.CONTEXT_LENGTH, scenes.SIZE, scenes.SIZE))
    for row in range(size):
        scene = scenes.random_scene(rng, excluded=EXCLUDED, two_objects=two_objects)
        image, labels = scenes.render(scene)
        images.append(image)
        # Some captions name an object by its shape alone, so that the class word ("a circle") means
        # "any circle": the generic prompt DeGu's context stream uses.
        vague = [bool(rng.random() < VAGUE) for _ in scene.things]
        # ``context_free`` of the captions leave the background unsaid, as real captions often do, so
        # that "a sks circle" (how users caption a subject) is a prompt the model knows: any background.
        # Only drawn when asked, so the first phase's random stream (and its weights) stay as they were.
        context = not (context_free and rng.random() < context_free)
        if rng.random() < drop:
            captions.append(EMPTY_PROMPT)
            continue
        captions.append(scene.caption(vague, context=context))
        for index, positions in enumerate(scene.word_positions(vague)):
            token_regions[row, list(positions)] = torch.from_numpy(labels == index + 1).float()
    return Batch(lab_model.to_latent(torch.from_numpy(np.stack(images))), captions, token_regions)


def batch(
    rng: np.random.Generator, size: int, drop: float = 0.1, context_free: float = 0.0,
    two_objects: float = scenes.TWO_OBJECTS,
) -> tuple[torch.Tensor, list[str]]:
    """Latents and captions of a training batch (``draw_batch`` without the regions)."""
    drawn = draw_batch(rng, size, drop, context_free, two_objects)
    return drawn.latents, drawn.captions


class CrossAttentionMaps:
    """While inside: every ``attn2`` layer's attention, (rows, pixels, tokens) averaged over heads,
    kept with its gradient (``lib_degu.attention.AttentionCapture`` reads the same, detached)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.layers = [module for _, module in find_cross_attention(unet)]
        self.maps: list[torch.Tensor] = []
        self._q: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> CrossAttentionMaps:
        for attn in self.layers:
            self._handles.append(attn.to_q.register_forward_hook(self._keep_q(attn)))
            self._handles.append(attn.to_k.register_forward_hook(self._attend(attn)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep_q(self, attn: torch.nn.Module):  # noqa: ANN202 - torch hook signature
        def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            self._q[id(attn)] = output

        return hook

    def _attend(self, attn: torch.nn.Module):  # noqa: ANN202 - torch hook signature
        def hook(module: torch.nn.Module, inputs: object, k: torch.Tensor) -> None:
            self.maps.append(attention_probs(self._q.pop(id(attn)), k, attn.heads).mean(1))

        return hook


def grounding_loss(maps: list[torch.Tensor], token_regions: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss (Wang et al. 2024): for every token that describes an object, one minus
    the share of its attention (over the image) that falls inside that object, squared; averaged over
    such tokens and over the layers. 0 when no token describes an object."""
    rows, tokens = token_regions.shape[:2]
    described = token_regions.flatten(2).amax(-1)  # (rows, tokens): 1 for a token with a region
    if not described.any():
        return token_regions.new_zeros(())
    losses, pooled = [], {}
    for probs in maps:
        side = math.isqrt(probs.shape[1])
        if side not in pooled:  # several layers share each resolution
            pooled[side] = F.adaptive_avg_pool2d(token_regions.flatten(0, 1)[:, None], side).view(rows, tokens, -1)
        region = pooled[side]
        attention = probs.transpose(1, 2)  # (rows, tokens, pixels)
        share = (attention * region).sum(-1) / attention.sum(-1).clamp_min(1e-12)
        losses.append((((1 - share) ** 2) * described).sum() / described.sum())
    return torch.stack(losses).mean()


def min_snr_weight(schedule: lab_model.Schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for eps prediction (Hang et al. 2023): min(SNR, gamma) / SNR.

    Nearly clean steps (high SNR) dominate a plain MSE but teach only texture; capping their weight
    spends the budget on the noisy steps where layout and shape are decided. gamma <= 0: plain MSE.
    """
    if gamma <= 0:
        return torch.ones(t.shape)
    a = schedule.alphas_cumprod[t]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


def train_phase(
    phase: Phase,
    out: Path,
    init: Path | None = None,
    batch_size: int = 64,
    min_snr: float = 5.0,
    attention_from_level: int = 1,
) -> None:
    """One phase of training, from scratch or continuing ``init``; writes the EMA weights to ``out``."""
    # The order of seeding, building and loading is part of the recipe: ``load`` builds a UNet and so
    # reseeds torch's generator, which the phase's noise and timesteps then draw from.
    torch.manual_seed(phase.seed)
    rng = np.random.default_rng(phase.seed)
    if init is None:
        text, unet = lab_model.TextEncoder(), lab_model.build_unet(phase.seed, attention_from_level)
    else:
        start = lab_model.load(init)
        text, unet = start.text_encoder.train(), start.unet.train()
    tokenizer = lab_model.Tokenizer()
    schedule = lab_model.Schedule()
    params = list(text.parameters()) + list(unet.parameters())
    optimiser = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0)
    ema = lab_model.Miniature(copy.deepcopy(text), copy.deepcopy(unet), tokenizer)
    print(f"text encoder {lab_model.parameter_count(text):,} params, unet {lab_model.parameter_count(unet):,}")

    # A fixed step count (not a time budget): the same command gives the same weights anywhere.
    started = time.perf_counter()
    total = phase.steps
    step = 0
    while step < total:
        drawn = draw_batch(rng, batch_size, context_free=phase.context_free, two_objects=phase.two_objects)
        noise = torch.randn_like(drawn.latents)
        t = torch.randint(0, schedule.steps, (batch_size,))
        noisy = schedule.add_noise(drawn.latents, noise, t)
        context = text(tokenizer(drawn.captions))
        with CrossAttentionMaps(unet) if phase.grounding else contextlib.nullcontext() as attention:
            error = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise, reduction="none")
        loss = (error.mean(dim=(1, 2, 3)) * min_snr_weight(schedule, t, min_snr)).mean()
        grounding = grounding_loss(attention.maps, drawn.token_regions) if phase.grounding else None
        if grounding is not None:
            loss = loss + phase.grounding * grounding
        lr = lab_model.cosine_lr(step, total, phase.lr)
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for live, avg in ((text, ema.text_encoder), (unet, ema.unet)):
                for p, q in zip(live.parameters(), avg.parameters(), strict=True):
                    q.lerp_(p, 1 - decay)
        if step % 200 == 0:
            elapsed = (time.perf_counter() - started) / 60
            extra = "" if grounding is None else f" grounding {grounding.item():.4f}"
            print(f"step {step}/{total} loss {loss.item():.4f}{extra} lr {lr:.2e} {elapsed:.1f} min", flush=True)
        if step % 2000 == 0 and step:
            lab_model.save(ema, out)
        step += 1
    lab_model.save(ema, out)
    print(f"saved {out} after {step} steps, {(time.perf_counter() - started) / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The committed model's first phase: 8800 steps (70.4 min on one thread beside other jobs; both: 81.3).
    parser.add_argument("--steps", type=int, default=8800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma weighting; 0: plain MSE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context-free", type=float, default=0.0,
                        help="share of captions without the background phrase")
    parser.add_argument("--two-objects", type=float, default=scenes.TWO_OBJECTS,
                        help="share of scenes with two objects (the committed base: the default)")
    parser.add_argument("--attention-from-level", type=int, default=1,
                        help="cross-attention on this level and coarser (0: also at 16x16; the committed base: 1); "
                             "with --init the model's own layout is kept")
    parser.add_argument("--grounding", type=float, default=0.0,
                        help="weight of a loss that draws each object word's attention onto its object "
                             "(TokenCompose's token loss; the committed base: 0)")
    parser.add_argument("--init", type=Path,
                        help="continue from this model instead of starting from scratch (one phase only)")
    parser.add_argument("--second-phase-steps", type=int, default=SECOND_PHASE.steps,
                        help="from scratch, continue this many steps as the committed second phase (0: none)")
    parser.add_argument("--out", type=Path, default=lab_model.MODELS_DIR / "base.safetensors")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shared = {"out": args.out, "batch_size": args.batch, "min_snr": args.min_snr}
    first = Phase(args.steps, args.lr, args.seed, args.context_free, args.two_objects, args.grounding)
    train_phase(first, init=args.init, attention_from_level=args.attention_from_level, **shared)
    if args.init is None and args.second_phase_steps > 0:
        train_phase(dataclasses.replace(SECOND_PHASE, steps=args.second_phase_steps), init=args.out, **shared)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
