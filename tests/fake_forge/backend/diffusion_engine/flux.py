"""Flux (dev) ``sd_model``: CLIP-L engine (pooled only) + T5 engine; conds are dicts with guidance.

Own re-implementation; mirrors backend/diffusion_engine/flux.py: Flux (Forge dfdcbab6).
"""

from __future__ import annotations

from typing import Any

import torch
from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_prediction import PredictionFlux
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine
from backend.text_processing.t5_engine import T5TextProcessingEngine


# mirrors backend/diffusion_engine/flux.py: Flux (Forge dfdcbab6)
class Flux(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        self.is_inpaint = False
        clip = CLIP(
            model_dict={
                "clip_l": huggingface_components["text_encoder"],
                "t5xxl": huggingface_components["text_encoder_2"],
            },
            tokenizer_dict={
                "clip_l": huggingface_components["tokenizer"],
                "t5xxl": huggingface_components["tokenizer_2"],
            },
        )
        vae = VAE(latent_channels=16)
        if "schnell" in estimated_config.huggingface_repo.lower():
            k_predictor = PredictionFlux(mu=1.0)
        else:
            k_predictor = PredictionFlux(
                seq_len=4096, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15
            )
            self.use_distilled_cfg_scale = True
        unet = UnetPatcher.from_model(
            model=huggingface_components["transformer"],
            diffusers_scheduler=None,
            k_predictor=k_predictor,
            config=estimated_config,
        )
        width_l = huggingface_components["text_encoder"].final_layer_norm.normalized_shape[0]
        self.text_processing_engine_l = ClassicTextProcessingEngine(
            text_encoder=clip.cond_stage_model.clip_l,
            tokenizer=clip.tokenizer.clip_l,
            embedding_key="clip_l",
            embedding_expected_shape=width_l,
            text_projection=False,
            minimal_clip_skip=1,
            clip_skip=1,
            return_pooled=True,
            final_layer_norm=True,
        )
        self.text_processing_engine_t5 = T5TextProcessingEngine(
            text_encoder=clip.cond_stage_model.t5xxl, tokenizer=clip.tokenizer.t5xxl
        )
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine_l.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> dict[str, torch.Tensor]:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        _, pooled_l = self.text_processing_engine_l(prompt)
        cond_t5 = self.text_processing_engine_t5(prompt)
        cond = dict(crossattn=cond_t5, vector=pooled_l)
        if self.use_distilled_cfg_scale:
            distilled_cfg_scale = getattr(prompt, "distilled_cfg_scale", 3.5) or 3.5
            cond["guidance"] = torch.FloatTensor([distilled_cfg_scale] * len(prompt))
        return cond

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        token_count = len(self.text_processing_engine_t5.tokenize([prompt])[0])
        return token_count, max(255, token_count)
