"""SD1.5 ``sd_model``: one CLIP engine as ``text_processing_engine``; conds are tensors.

Own re-implementation; mirrors backend/diffusion_engine/sd15.py: StableDiffusion (Forge dfdcbab6).
"""

from __future__ import annotations

from typing import Any

import torch
from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine


# mirrors backend/diffusion_engine/sd15.py: StableDiffusion (Forge dfdcbab6)
class StableDiffusion(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        clip = CLIP(
            model_dict={"clip_l": huggingface_components["text_encoder"]},
            tokenizer_dict={"clip_l": huggingface_components["tokenizer"]},
        )
        vae = VAE(latent_channels=4)
        unet = UnetPatcher.from_model(
            model=huggingface_components["unet"],
            diffusers_scheduler=huggingface_components["scheduler"],
            config=estimated_config,
        )
        width = huggingface_components["text_encoder"].final_layer_norm.normalized_shape[0]
        self.text_processing_engine = ClassicTextProcessingEngine(
            text_encoder=clip.cond_stage_model.clip_l,
            tokenizer=clip.tokenizer.clip_l,
            embedding_key="clip_l",
            embedding_expected_shape=width,
            text_projection=False,
            minimal_clip_skip=1,
            clip_skip=1,
            return_pooled=False,
            final_layer_norm=True,
        )
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd1 = True

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> torch.Tensor:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        return self.text_processing_engine(prompt)

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        _, token_count = self.text_processing_engine.process_texts([prompt])
        return token_count, self.text_processing_engine.get_target_prompt_token_count(token_count)
