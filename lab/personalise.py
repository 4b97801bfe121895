"""Teach the base miniature a subject the three ways WebUI users do it.

    python -m lab.personalise                       # every method x every subject of lab.subjects
    python -m lab.personalise --methods lora --subjects sks:circle:purple:striped:teal:checkered

Each subject is taught from six rendered images that share one context (its background colour and
texture), captioned ``a <token> <shape> on a <texture> <background> background`` or, per the recipe,
``a <token> <shape>`` alone (``Recipe.captions``). Recipes are ``RECIPES`` per method with ``TUNED``
overrides per subject, each commented with what it measured; ``--set`` changes a field to try another.

- **DreamBooth**: the UNet's weights are fine-tuned (the text encoder too with ``text_encoder``), with
  prior preservation from regularisation images of the training distribution and class images (the
  class word must keep meaning "any circle"). Saved as the UNet's weights.
- **LoRA**: rank-4 adapters on every attention projection (``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``, self- and cross-attention), trained alone; applied the way Forge applies LoRA, merged
  into the weights (``W + scale * up @ down``) so the capture hooks see them.
- **Textual Inversion**: only the token's input embedding is learned (a WebUI embedding is exactly
  that: vectors put where the embedding's name stands in the prompt).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from lab.train_base import CONTEXT_FREE, min_snr_weight
from lab.train_base import batch as prior_batch

METHODS = ("dreambooth", "lora", "ti")
TRAINING_IMAGES = 6
LORA_RANK = 4
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Share of the class images placed in the subject's training context unless a recipe says otherwise.
CLASS_OWN_CONTEXT = 1 / 3


@dataclass(frozen=True)
class Recipe:
    steps: int
    lr: float
    prior_weight: float  # weight of the prior-preservation loss (0: none)
    # How the six images are captioned: "context" names it ("a sks circle on a checkered teal
    # background"); "subject" names the subject alone, as DreamBooth users do ("a photo of sks dog"),
    # so the token absorbs the context and, asked for a new one, the model paints the training one
    # back (the paper's entanglement); "mixed" alternates the two; "colour" names the background's
    # colour and leaves its texture out.
    captions: str = "context"
    min_snr: float = 0.0  # Min-SNR-gamma loss weighting (lab.train_base), 0: plain MSE
    # Share of the prior batch that is DreamBooth's "class images": the class word alone ("a circle
    # on ...") drawn in any other appearance, the subject's training context included. Without them
    # a fine-tune strong enough to learn the subject also teaches "circle" to mean the subject.
    class_share: float = 0.0
    # Share of the class images drawn in the subject's training context; the rest in random contexts
    # (1 in 18 of them the training context by chance).
    class_own_context: float = CLASS_OWN_CONTEXT
    # Train the text encoder too (DreamBooth's --train_text_encoder; LoRA on its layers, as kohya's
    # LoRAs carry lora_te_* modules that the WebUIs apply). Tried so that a subject learned from
    # "a sks circle" comes back in longer prompts: it did not (learned 0.12 / 0.00, model card).
    text_encoder: bool = False


# Every recipe captions the six images with the subject alone, as users do ("a photo of sks dog"):
# the token then absorbs the shared context, and asked for a new one the model paints the training
# one back, the entanglement DeGu is for (prompt editability below the generic prompt's, model card).
# The base must know captions that leave the background unsaid (lab.train_base's second phase):
# on a base that never saw them, DreamBooth and LoRA bound the subject to the exact caption and drew
# it 0.00 of the time in any longer prompt, so the earlier recipes named the context and did not
# entangle (LoRA sks: 0.991 vs the generic prompt's 0.977).
RECIPES = {
    # 600 steps at 2e-4 drew the subject 0.00 in new contexts; 2,000 drew it 0.53 but broke the generic
    # prompt (editability 0.911); 1e-3 broke both (0.83). On sks it shows the subject for "a circle" in
    # the training context 0.13 of the time (256 seeds, 100-355; learned 0.85). Learned / that leak
    # (128 seeds): 1,000 steps 0.63 / 0.01, lr 4e-4 0.52 / 0.05, prior weight 1.5 0.78 / 0.09, prior
    # weight 2 0.72 / 0.27 (64 seeds); class_share 0.25 0.98 / 0.06 and class_share 0.5 1.00 / 0.13
    # (256 seeds); 1,000 steps with class_share 0.5 0.99 / 0.04 (training seeds 1 and 2: 0.84 / 0.13,
    # 0.93 / 0.02; this recipe at seeds 1 and 2: 0.50 / 0.03, 0.70 / 0.13). Those are not used: class
    # images captioned "a circle" alone, a third of them in the training context, pull the class word
    # towards that background, and the generic prompt (DeGu's context stream) stops following held-out
    # contexts: "a circle on a plain sky background" 0.995 -> 0.68 of its context, dev split 0.977 ->
    # 0.849 (12 seeds; class_share 0.25: 0.709). Captioned with their context instead, the class images
    # taught "a sks circle on a checkered teal background" nothing (learned 0.01). sks's recipe places
    # none in the training context (TUNED).
    "dreambooth": Recipe(steps=1200, lr=5e-4, prior_weight=1.0, min_snr=5.0, captions="subject"),
    # 600 steps at 2e-3: learned 0.94, drawn in new contexts 0.44, no entanglement (0.977 vs 0.977).
    "lora": Recipe(steps=1200, lr=4e-3, prior_weight=3.0, min_snr=5.0, class_share=0.5, captions="subject"),
    # 1,500 steps at 2e-2 or 600 at 5e-2 changed nothing on sks (learned 1.00, not entangled).
    "ti": Recipe(steps=600, lr=1e-2, prior_weight=0.0, min_snr=5.0, captions="subject"),
}
# Fine-tunes tuned one by one (issue 12: learned >= 0.8 in the training context, the class word
# showing the subject <= 0.1 elsewhere), measured with lab.prompt_following --personalised.
TUNED = {
    # The triangle is the base's least certain shape: at the default recipe DreamBooth learned it 0.06;
    # 2,000 steps at prior weight 1 learned 0.75 without entangling (0.882 vs 0.881). At prior weight
    # 0.5 (32 seeds; class word held-out / training context): 1,500 steps 0.78 (0.00 / 0.16), 2,000
    # 0.81 (0.00 / 0.00), 1,500 at lr 7e-4 0.91 (0.00 / 0.00), 2,500 1.00 (0.00 / 0.03); prior 0.25: 0.75.
    ("ohwx", "dreambooth"): Recipe(steps=2500, lr=5e-4, prior_weight=0.5, min_snr=5.0, captions="subject"),
    # The DreamBooth recipe showed the subject for "a circle" in sks's training context 0.13 of the
    # time (above). A quarter of the prior batch as class images, none of them placed in the training
    # context, stops that at every training seed tried and learns the subject better. Learned / leak
    # in the training context (256 seeds), generic prompt's editability dev / test (12 seeds), at
    # training seeds 0 / 1 / 2: 0.95 / 0.004, 0.90 / 0.96; 1.00 / 0.004, 0.87 / 0.89; 0.98 / 0.10, 0.95 /
    # 0.97. The RECIPES one at seeds 0 / 1 / 2: 0.85 / 0.13, 0.50 / 0.03, 0.70 / 0.13; generic prompt
    # 0.98 / 0.96, 0.90 / 0.90, 0.93 / 0.97: the fine-tune moves the class word that much either way.
    # Half the batch (class_share 0.5) with none in the context: 0.84 / 0.004, 0.79 / 0.008, 0.87 /
    # 0.10 learned / leak.
    ("sks", "dreambooth"): Recipe(steps=1200, lr=5e-4, prior_weight=1.0, min_snr=5.0, captions="subject",
                                  class_share=0.25, class_own_context=0.0),
}


def recipe_for(subject: Subject, method: str) -> Recipe:
    return TUNED.get((subject.token, method), RECIPES[method])


def changed(recipe: Recipe, assignments: Sequence[str]) -> Recipe:
    """``recipe`` with ``name=value`` assignments applied, each value read as its field's type."""
    changes: dict[str, object] = {}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        if name not in {f.name for f in dataclasses.fields(recipe)}:
            raise SystemExit(f"unknown recipe field {name!r}")
        current = getattr(recipe, name)
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise SystemExit(f"{name} takes true or false, got {text!r}")
            changes[name] = text.lower() == "true"
        else:
            changes[name] = type(current)(text)
    return dataclasses.replace(recipe, **changes)


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


def training_caption(scene: scenes.Scene, subject: Subject, mode: str, index: int) -> str:
    """The caption of the ``index``-th training image under the recipe's caption ``mode``."""
    if mode == "context" or (mode == "mixed" and index % 2 == 0):
        return scene.caption()
    if mode in ("subject", "mixed"):
        return f"a {subject.token} {subject.shape}"
    if mode == "colour":  # the background's colour named, its texture left for the token to absorb
        return f"a {subject.token} {subject.shape} on a {scene.background} background"
    raise ValueError(f"unknown caption mode {mode!r}")


def model_path(subject: Subject, method: str) -> Path:
    return lab_model.MODELS_DIR / f"{subject.token}_{method}.safetensors"


# -- LoRA ----------------------------------------------------------------------------------------
def lora_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    return {
        name: module for name, module in unet.named_modules()
        if isinstance(module, nn.Linear) and any(name.endswith(f".{t}") for t in LORA_TARGETS)
        and (".attn1." in name or ".attn2." in name)
    }


def text_lora_layers(text: nn.Module) -> dict[str, nn.Linear]:
    """The text encoder's linear layers a LoRA adapts: each layer's MLP (its attention projections are
    packed into ``nn.MultiheadAttention``, which reads their weights directly, not through modules)."""
    return {
        name: module for name, module in text.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(("linear1", "linear2"))
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


def merge_lora(
    unet: nn.Module, tensors: dict[str, torch.Tensor], scale: float = 1.0, *, prefix: str = ""
) -> nn.Module:
    """A copy of ``unet`` (or, with ``prefix="text."``, the text encoder) with the LoRA merged into its
    weights (Forge's way of applying LoRA)."""
    merged = copy.deepcopy(unet)
    layers = text_lora_layers(merged) if prefix else lora_layers(merged)
    for name, layer in layers.items():
        name = prefix + name
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
        unet.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("text.")})
        text = base.text_encoder
        if any(k.startswith("text.") for k in tensors):
            text = copy.deepcopy(base.text_encoder)
            text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
        return lab_model.Miniature(text.eval(), unet.eval(), base.tokenizer)
    if method == "lora":
        text = merge_lora(base.text_encoder, tensors, prefix="text.") if any(
            k.startswith("text.") for k in tensors) else base.text_encoder
        return lab_model.Miniature(text.eval(), merge_lora(base.unet, tensors).eval(), base.tokenizer)
    if method == "ti":
        text = copy.deepcopy(base.text_encoder)
        text.token_embedding.weight.data[base.tokenizer.index[subject.token]] = tensors["emb_params"][0]
        return lab_model.Miniature(text.eval(), base.unet, base.tokenizer)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


# -- training ------------------------------------------------------------------------------------
def class_images(
    rng: np.random.Generator, subject: Subject, size: int, context: bool = True,
    own_context: float = CLASS_OWN_CONTEXT,
) -> tuple[torch.Tensor, list[str]]:
    """``size`` scenes of the subject's class in appearances the base model was trained on (never
    the subject's), captioned by the class word alone; ``own_context`` of them in the subject's
    training context.
    Without ``context`` the caption is DreamBooth's class prompt, "a circle", as the subject's is."""
    images, captions = [], []
    while len(images) < size:
        thing = scenes.random_thing(rng, subject.shape)
        if (thing.shape, thing.colour, thing.striped) in EXCLUDED | {subject.combination}:
            continue
        own = rng.random() < own_context
        scene = scenes.Scene(
            things=(thing,),
            background=subject.background if own else str(rng.choice(list(scenes.BACKGROUND_COLOURS))),
            texture=subject.texture if own else str(rng.choice(scenes.TEXTURES)),
        )
        images.append(scenes.render(scene)[0])
        captions.append(scene.caption(vague=(True,), context=context))
    return lab_model.to_latent(torch.from_numpy(np.stack(images))), captions


def prior_images(
    rng: np.random.Generator, subject: Subject, size: int, class_share: float, class_context: bool = True,
    own_context: float = CLASS_OWN_CONTEXT,
) -> tuple[torch.Tensor, list[str]]:
    """The prior-preservation batch: base-data scenes (captioned as the base was), ``class_share`` of
    them class images."""
    classes = round(size * class_share)
    parts = [prior_batch(rng, size - classes, drop=0.0, context_free=CONTEXT_FREE)] if classes < size else []
    if classes:
        parts.append(class_images(rng, subject, classes, context=class_context, own_context=own_context))
    return torch.cat([latents for latents, _ in parts]), [c for _, captions in parts for c in captions]


def train(
    subject: Subject, method: str, base: lab_model.Miniature, seed: int = 0, recipe: Recipe | None = None
) -> dict[str, torch.Tensor]:
    recipe = recipe or recipe_for(subject, method)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    shots = training_scenes(subject, seed)
    images = lab_model.to_latent(torch.from_numpy(np.stack([scenes.render(s)[0] for s in shots])))
    captions = [training_caption(s, subject, recipe.captions, i) for i, s in enumerate(shots)]
    text, unet = copy.deepcopy(base.text_encoder), copy.deepcopy(base.unet)
    text.requires_grad_(False)
    unet.requires_grad_(False)
    if recipe.text_encoder:
        # Dropout is 0: train() only keeps PyTorch's fused inference path, which reads the layers'
        # weights directly and would skip the LoRA wrappers, out of the way.
        text.train()
    token = base.tokenizer.index[subject.token]
    if method == "dreambooth":
        unet.requires_grad_(True)
        params = list(unet.parameters())
        if recipe.text_encoder:
            text.requires_grad_(True)
            params += list(text.parameters())
    elif method == "lora":
        wrapped = {name: LoRALinear(layer, LORA_RANK, generator) for name, layer in lora_layers(unet).items()}
        for name, layer in wrapped.items():
            _swap(unet, name, layer)
        if recipe.text_encoder:
            text_wrapped = {name: LoRALinear(layer, LORA_RANK, generator)
                            for name, layer in text_lora_layers(text).items()}
            for name, layer in text_wrapped.items():
                _swap(text, name, layer)
            wrapped |= {f"text.{name}": layer for name, layer in text_wrapped.items()}
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
        error = F.mse_loss(
            unet(schedule.add_noise(images, noise, t), t, encoder_hidden_states=context).sample, noise, reduction="none"
        )
        loss = (error.mean(dim=(1, 2, 3)) * min_snr_weight(schedule, t, recipe.min_snr)).mean()
        if recipe.prior_weight:
            latents, prior_captions = prior_images(
                rng, subject, len(images), recipe.class_share, class_context=recipe.captions != "subject",
                own_context=recipe.class_own_context)
            prior_noise = torch.randn(latents.shape, generator=generator)
            tp = torch.randint(0, schedule.steps, (len(latents),), generator=generator)
            prediction = unet(schedule.add_noise(latents, prior_noise, tp), tp,
                              encoder_hidden_states=text(base.tokenizer(prior_captions))).sample
            loss = loss + recipe.prior_weight * F.mse_loss(prediction, prior_noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if method == "dreambooth":
        text_state = {f"text.{k}": v for k, v in text.state_dict().items()} if recipe.text_encoder else {}
        return dict(unet.state_dict()) | text_state
    if method == "lora":
        return {f"{name}.{part}": getattr(layer, part).detach()
                for name, layer in wrapped.items() for part in ("down", "up")}
    return {"emb_params": embedding.detach()[None]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Personalise the base miniature (DreamBooth, LoRA, TI).")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--subjects", nargs="+", type=Subject.parse, default=list(SUBJECTS))
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="recipe fields to change, e.g. captions=subject text_encoder=true steps=1200")
    parser.add_argument("--out", type=Path, help="write the models into this folder instead of lab/models")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = lab_model.load()
    for subject in args.subjects:
        if subject.combination not in EXCLUDED:
            print(f"note: {subject} was in the base model's training data")
        for method in args.methods:
            started = time.perf_counter()
            recipe = changed(recipe_for(subject, method), args.set)
            tensors = train(subject, method, base, recipe=recipe)
            path = model_path(subject, method) if args.out is None else args.out / model_path(subject, method).name
            save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(path))
            print(f"{subject.token} {method}: {time.perf_counter() - started:.0f} s, {recipe}", flush=True)


if __name__ == "__main__":
    main()
