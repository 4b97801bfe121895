"""Teach the base miniature a subject the three ways WebUI users do it.

    python -m lab.personalise                       # every method x every subject of lab.subjects
    python -m lab.personalise --methods lora --subjects sks:circle:purple:striped:teal:checkered

Each subject is taught from six rendered images that share one context (its background colour and
texture), captioned ``a <token> <shape> on a <texture> <background> background``:

- **DreamBooth**: the UNet's weights are fine-tuned (text encoder frozen), with prior preservation
  from regularisation images of the training distribution (the class word must keep meaning "any
  circle"). Saved as the UNet's weights.
- **LoRA**: rank-4 adapters on every attention projection (``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``, self- and cross-attention), trained alone; applied the way Forge applies LoRA, merged
  into the weights (``W + scale * up @ down``) so the capture hooks see them.
- **Textual Inversion**: only the token's input embedding is learned (a WebUI embedding is exactly
  that: vectors put where the embedding's name stands in the prompt).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lab import model as lab_model
from lab import scenes
from lab.subjects import EXCLUDED, SUBJECTS, Subject
from lab.train_base import batch as prior_batch

METHODS = ("dreambooth", "lora", "ti")
TRAINING_IMAGES = 6
LORA_RANK = 4
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class Recipe:
    steps: int
    lr: float
    prior_weight: float  # weight of the prior-preservation loss (0: none)


RECIPES = {
    "dreambooth": Recipe(steps=600, lr=2e-4, prior_weight=3.0),
    "lora": Recipe(steps=600, lr=2e-3, prior_weight=3.0),
    "ti": Recipe(steps=600, lr=1e-2, prior_weight=0.0),
}


def training_scenes(subject: Subject, seed: int = 0) -> list[scenes.Scene]:
    """The six images the user has: the subject at different places and sizes, always in one context."""
    rng = np.random.default_rng(seed)
    return [
        scenes.Scene(
            things=(scenes.random_thing(rng, subject.shape, subject.colour, subject.striped),),
            background=subject.background, texture=subject.texture, names=(subject.token,),
        )
        for _ in range(TRAINING_IMAGES)
    ]


def model_path(subject: Subject, method: str) -> Path:
    return lab_model.MODELS_DIR / f"{subject.token}_{method}.safetensors"


# -- LoRA ----------------------------------------------------------------------------------------
def lora_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    return {
        name: module for name, module in unet.named_modules()
        if isinstance(module, nn.Linear) and any(name.endswith(f".{t}") for t in LORA_TARGETS)
        and (".attn1." in name or ".attn2." in name)
    }


class LoRALinear(nn.Module):
    """Training-time wrapper: ``base(x) + up(down(x))``; ``up`` starts at zero (the base model)."""

    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / rank)
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up)


def _swap(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, new)


def merge_lora(unet: nn.Module, tensors: dict[str, torch.Tensor], scale: float = 1.0) -> nn.Module:
    """A copy of ``unet`` with the LoRA merged into its weights (Forge's way of applying LoRA)."""
    merged = copy.deepcopy(unet)
    for name, layer in lora_layers(merged).items():
        if f"{name}.down" in tensors:
            delta = tensors[f"{name}.up"].float() @ tensors[f"{name}.down"].float()
            layer.weight.data += scale * delta
    return merged


# -- loading a personalised model ------------------------------------------------------------------
def load(subject: Subject, method: str, base: lab_model.Miniature | None = None) -> lab_model.Miniature:
    """The base model with ``subject`` taught by ``method``, from the committed files."""
    base = base or lab_model.load()
    tensors = {k: v.float() for k, v in load_file(str(model_path(subject, method))).items()}
    if method == "dreambooth":
        unet = copy.deepcopy(base.unet)
        unet.load_state_dict(tensors)
        return lab_model.Miniature(base.text_encoder, unet.eval(), base.tokenizer)
    if method == "lora":
        return lab_model.Miniature(base.text_encoder, merge_lora(base.unet, tensors).eval(), base.tokenizer)
    if method == "ti":
        text = copy.deepcopy(base.text_encoder)
        text.token_embedding.weight.data[base.tokenizer.index[subject.token]] = tensors["emb_params"][0]
        return lab_model.Miniature(text.eval(), base.unet, base.tokenizer)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


# -- training ------------------------------------------------------------------------------------
def train(subject: Subject, method: str, base: lab_model.Miniature, seed: int = 0) -> dict[str, torch.Tensor]:
    recipe = RECIPES[method]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    shots = training_scenes(subject, seed)
    images = lab_model.to_latent(torch.from_numpy(np.stack([scenes.render(s)[0] for s in shots])))
    captions = [s.caption() for s in shots]
    text, unet = copy.deepcopy(base.text_encoder), copy.deepcopy(base.unet)
    text.requires_grad_(False)
    unet.requires_grad_(False)
    token = base.tokenizer.index[subject.token]
    if method == "dreambooth":
        unet.requires_grad_(True)
        params = list(unet.parameters())
    elif method == "lora":
        wrapped = {name: LoRALinear(layer, LORA_RANK, generator) for name, layer in lora_layers(unet).items()}
        for name, layer in wrapped.items():
            _swap(unet, name, layer)
        params = [p for layer in wrapped.values() for p in (layer.down, layer.up)]
    else:
        # Start from the class word's embedding, as TI trainers do with an init word.
        embedding = text.token_embedding.weight[base.tokenizer.index[subject.shape]].clone().requires_grad_(True)
        params = [embedding]
    optimiser = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    schedule = lab_model.Schedule()
    ids = base.tokenizer(captions)
    for _ in range(recipe.steps):
        noise = torch.randn(images.shape, generator=generator)
        t = torch.randint(0, schedule.steps, (len(images),), generator=generator)
        if method == "ti":
            embeddings = text.token_embedding(ids)
            embeddings = torch.where((ids == token)[..., None], embedding, embeddings)
            context = text(ids, embeddings=embeddings)
        else:
            context = text(ids)
        loss = F.mse_loss(unet(schedule.add_noise(images, noise, t), t, encoder_hidden_states=context).sample, noise)
        if recipe.prior_weight:
            latents, prior_captions = prior_batch(rng, len(images), drop=0.0)
            prior_noise = torch.randn(latents.shape, generator=generator)
            tp = torch.randint(0, schedule.steps, (len(latents),), generator=generator)
            prediction = unet(schedule.add_noise(latents, prior_noise, tp), tp,
                              encoder_hidden_states=text(base.tokenizer(prior_captions))).sample
            loss = loss + recipe.prior_weight * F.mse_loss(prediction, prior_noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if method == "dreambooth":
        return dict(unet.state_dict())
    if method == "lora":
        return {f"{name}.{part}": getattr(layer, part).detach()
                for name, layer in wrapped.items() for part in ("down", "up")}
    return {"emb_params": embedding.detach()[None]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Personalise the base miniature (DreamBooth, LoRA, TI).")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--subjects", nargs="+", type=Subject.parse, default=list(SUBJECTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = lab_model.load()
    for subject in args.subjects:
        if subject.combination not in EXCLUDED:
            print(f"note: {subject} was in the base model's training data")
        for method in args.methods:
            started = time.perf_counter()
            tensors = train(subject, method, base)
            save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(model_path(subject, method)))
            print(f"{subject.token} {method}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
