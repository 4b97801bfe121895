"""SD3.5 ``sd_model``: CLIP-L and CLIP-G engines (with pooled outputs) + T5 engine; conds are dicts whose
``crossattn`` joins the CLIP tokens (L and G side by side) and the T5 tokens; the model is an MM-DiT.

Own re-implementation; mirrors backend/diffusion_engine/sd35.py: StableDiffusion3 (Forge dfdcbab6).
"""

from __future__ import annotations

from typing import Any

import torch
from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_prediction import PredictionDiscreteFlow
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine
from backend.text_processing.t5_engine import T5TextProcessingEngine
from modules.shared import opts


# mirrors backend/diffusion_engine/sd35.py: StableDiffusion3 (Forge dfdcbab6)
class StableDiffusion3(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        self.is_inpaint = False
        clip = CLIP(
            model_dict={
                "clip_l": huggingface_components["text_encoder"],
                "clip_g": huggingface_components["text_encoder_2"],
                "t5xxl": huggingface_components["text_encoder_3"],
            },
            tokenizer_dict={
                "clip_l": huggingface_components["tokenizer"],
                "clip_g": huggingface_components["tokenizer_2"],
                "t5xxl": huggingface_components["tokenizer_3"],
            },
        )
        unet = UnetPatcher.from_model(
            model=huggingface_components["transformer"],
            diffusers_scheduler=None,
            k_predictor=PredictionDiscreteFlow(shift=3.0),
            config=estimated_config,
        )
        engines = {}
        for key, encoder in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
            engines[key] = ClassicTextProcessingEngine(
                text_encoder=getattr(clip.cond_stage_model, key),
                tokenizer=getattr(clip.tokenizer, key),
                embedding_key=key,
                embedding_expected_shape=huggingface_components[encoder].final_layer_norm.normalized_shape[0],
                text_projection=True,
                minimal_clip_skip=1,
                clip_skip=1,
                return_pooled=True,
                final_layer_norm=False,
            )
        self.text_processing_engine_l, self.text_processing_engine_g = engines["clip_l"], engines["clip_g"]
        self.text_processing_engine_t5 = T5TextProcessingEngine(
            text_encoder=clip.cond_stage_model.t5xxl, tokenizer=clip.tokenizer.t5xxl
        )
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=VAE(latent_channels=16), clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd3 = True

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine_l.clip_skip = clip_skip
        self.text_processing_engine_g.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> dict[str, torch.Tensor]:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        cond_g, g_pooled = self.text_processing_engine_g(prompt)
        cond_l, l_pooled = self.text_processing_engine_l(prompt)
        cond_t5 = self.text_processing_engine_t5(prompt)
        if not opts.sd3_enable_t5:
            cond_t5 = torch.zeros_like(cond_t5)
        if getattr(prompt, "is_negative_prompt", False) and all(x == "" for x in prompt):
            l_pooled, g_pooled = torch.zeros_like(l_pooled), torch.zeros_like(g_pooled)
            cond_l, cond_g, cond_t5 = torch.zeros_like(cond_l), torch.zeros_like(cond_g), torch.zeros_like(cond_t5)
        cond_lg = torch.cat([cond_l, cond_g], dim=-1)
        cond_lg = torch.nn.functional.pad(cond_lg, (0, cond_t5.shape[-1] - cond_lg.shape[-1]))
        return dict(crossattn=torch.cat([cond_lg, cond_t5], dim=-2), vector=torch.cat([l_pooled, g_pooled], dim=-1))

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        token_count = len(self.text_processing_engine_t5.tokenize([prompt])[0])
        return token_count, max(255, token_count)
