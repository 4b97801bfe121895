"""SDXL ``sd_model``: CLIP-L and CLIP-G engines (G with its pooled output); conds are dicts whose
``crossattn`` holds the L and G tokens side by side and whose ``vector`` (the UNet's ``y``) holds the
pooled G output and the embedded image size and crop.

Own re-implementation; mirrors backend/diffusion_engine/sdxl.py: StableDiffusionXL (Forge dfdcbab6).
Its ``Timestep(256)`` size embedder is a sinusoidal one of ``SIZE_FEATURES`` per value here (tiny).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine
from modules.shared import opts

SIZE_FEATURES = 8


def size_embedding(value: float, dim: int = SIZE_FEATURES) -> torch.Tensor:
    """Stands in for backend/nn/unet.py: Timestep(dim): sinusoidal features of one number."""
    frequencies = torch.exp(-math.log(10000) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = float(value) * frequencies
    return torch.cat([torch.cos(angles), torch.sin(angles)])


# mirrors backend/diffusion_engine/sdxl.py: StableDiffusionXL (Forge dfdcbab6)
class StableDiffusionXL(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        components = huggingface_components
        clip = CLIP(
            model_dict={"clip_l": components["text_encoder"], "clip_g": components["text_encoder_2"]},
            tokenizer_dict={"clip_l": components["tokenizer"], "clip_g": components["tokenizer_2"]},
        )
        unet = UnetPatcher.from_model(
            model=huggingface_components["unet"],
            diffusers_scheduler=huggingface_components["scheduler"],
            config=estimated_config,
        )
        engines = {}
        for key, encoder, pooled in (("clip_l", "text_encoder", False), ("clip_g", "text_encoder_2", True)):
            engines[key] = ClassicTextProcessingEngine(
                text_encoder=getattr(clip.cond_stage_model, key),
                tokenizer=getattr(clip.tokenizer, key),
                embedding_key=key,
                embedding_expected_shape=huggingface_components[encoder].final_layer_norm.normalized_shape[0],
                text_projection=pooled,
                minimal_clip_skip=2,
                clip_skip=2,
                return_pooled=pooled,
                final_layer_norm=False,
            )
        self.text_processing_engine_l, self.text_processing_engine_g = engines["clip_l"], engines["clip_g"]
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=VAE(latent_channels=4), clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sdxl = True

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine_l.clip_skip = clip_skip
        self.text_processing_engine_g.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> dict[str, torch.Tensor]:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        cond_l = self.text_processing_engine_l(prompt)
        cond_g, clip_pooled = self.text_processing_engine_g(prompt)
        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        sizes = [height, width, opts.sdxl_crop_top, opts.sdxl_crop_left, height, width]
        flat = torch.cat([size_embedding(v) for v in sizes])[None].repeat(clip_pooled.shape[0], 1).to(clip_pooled)
        if getattr(prompt, "is_negative_prompt", False) and all(x == "" for x in prompt):
            clip_pooled, cond_l, cond_g = (torch.zeros_like(t) for t in (clip_pooled, cond_l, cond_g))
        return dict(crossattn=torch.cat([cond_l, cond_g], dim=2), vector=torch.cat([clip_pooled, flat], dim=1))

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        _, token_count = self.text_processing_engine_l.process_texts([prompt])
        return token_count, self.text_processing_engine_l.get_target_prompt_token_count(token_count)
