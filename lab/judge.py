"""The judge: a small fully-convolutional network that reads a 32x32 scene pixel by pixel.

Per pixel it predicts which shape covers it (or background), the object's colour and pattern, and
the background's colour and texture. Every score of the experiment (prompt following, fidelity,
editability, the subject's region for mask IoU) is read from it, so all variants are scored by the
same eye. Trained on rendered scenes with noise and blur, so that it reads generated images that are
a little off.

    python -m lab.judge                    # writes lab/models/judge.safetensors
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lab import scenes
from lab.model import MODELS_DIR, cosine_lr

REGIONS = ("background",) + scenes.SHAPES
COLOURS = tuple(scenes.OBJECT_COLOURS)
BACKGROUNDS = tuple(scenes.BACKGROUND_COLOURS)
HEADS = {"region": len(REGIONS), "colour": len(COLOURS), "striped": 2, "background": len(BACKGROUNDS),
         "texture": len(scenes.TEXTURES)}
PATH = MODELS_DIR / "judge.safetensors"


class Judge(nn.Module):
    def __init__(self, width: int = 48) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for dilation in (1, 2, 4, 8, 2, 1):  # receptive field ~37 px: the whole object and its surroundings
            layers += [nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.heads = nn.Conv2d(width, sum(HEADS.values()), 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) in [-1, 1] -> per head (B, classes, 32, 32) logits."""
        logits = self.heads(self.body(images))
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=1), strict=True))


@dataclass
class Reading:
    """Per-pixel argmax labels, each (B, 32, 32) long."""

    region: torch.Tensor
    colour: torch.Tensor
    striped: torch.Tensor
    background: torch.Tensor
    texture: torch.Tensor


@torch.no_grad()
def read(judge: Judge, images: torch.Tensor) -> Reading:
    return Reading(**{k: v.argmax(dim=1) for k, v in judge(images.float().clamp(-1, 1)).items()})


def labelled_batch(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rendered scenes (every combination, subjects included) and their per-pixel targets; -1 = ignore."""
    images, targets = [], {k: [] for k in HEADS}
    for _ in range(size):
        scene = scenes.random_scene(rng, two_objects=0.4)
        image, labels = scenes.render(scene)
        images.append(image)
        region = np.zeros_like(labels)
        colour = np.full_like(labels, -1)
        striped = np.full_like(labels, -1)
        for index, thing in enumerate(scene.things):
            covered = labels == index + 1
            region[covered] = REGIONS.index(thing.shape)
            colour[covered] = COLOURS.index(thing.colour)
            striped[covered] = int(thing.striped)
        background = np.where(labels == 0, BACKGROUNDS.index(scene.background), -1)
        texture = np.where(labels == 0, scenes.TEXTURES.index(scene.texture), -1)
        for key, value in zip(HEADS, (region, colour, striped, background, texture), strict=True):
            targets[key].append(value)
    return torch.from_numpy(np.stack(images)), {k: torch.from_numpy(np.stack(v)) for k, v in targets.items()}


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise, a faint 2-pixel grid and a random slight blur: generated images are never as clean as
    rendered ones. The grid is what the 2x2-folded latent leaves when one sub-pixel channel is a
    little off; it must not read as a texture (the scenes' textures have a 4-pixel period)."""
    batch = images.shape[0]
    noise = torch.rand(batch, 1, 1, 1, generator=generator) * 0.15
    images = images + noise * torch.randn(images.shape, generator=generator)
    grid = torch.randn(batch, 3, 2, 2, generator=generator) * torch.rand(batch, 1, 1, 1, generator=generator) * 0.15
    images = images + grid.repeat(1, 1, images.shape[-2] // 2, images.shape[-1] // 2)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(images.shape[0], 1, 1, 1, generator=generator) * 0.6
    return (images + mix * (blurred - images)).clamp(-1, 1)


def load(path: Path = PATH) -> Judge:
    judge = Judge()
    judge.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return judge.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the judge network on rendered scenes.")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--object-weight", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=PATH)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    judge = Judge()
    optimiser = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    started = time.perf_counter()
    for step in range(args.steps):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, args.steps, 2e-3)
        images, targets = labelled_batch(rng, 32)
        logits = judge(degrade(images, generator))
        loss = sum(F.cross_entropy(logits[k], targets[k], ignore_index=-1) for k in HEADS if k != "region")
        # Object pixels are a fifth of a scene: unweighted, the shape head learns "background" and
        # guesses the shape (it read a square as a square one time in five); weight them up.
        region = F.cross_entropy(logits["region"], targets["region"], reduction="none")
        weight = torch.where(targets["region"] > 0, args.object_weight, 1.0)
        loss = loss + (region * weight).sum() / weight.sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    images, targets = labelled_batch(np.random.default_rng(args.seed + 1), 256)
    reading = read(judge, degrade(images, generator))
    for key in HEADS:
        valid = targets[key] >= 0
        accuracy = (getattr(reading, key)[valid] == targets[key][valid]).float().mean().item()
        print(f"held-out pixel accuracy {key}: {accuracy:.4f}")
    save_file({k: v.half().contiguous() for k, v in judge.state_dict().items()}, str(args.out))
    print(f"saved {args.out} after {args.steps} steps, {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
