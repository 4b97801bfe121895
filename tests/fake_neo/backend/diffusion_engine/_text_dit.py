"""What the simulated Forge Neo engines for its newer families share (not a Neo file): one text
engine stored under the attribute Neo uses for that family, a flow predictor, a 16-channel latent,
conds that are a plain tensor (no pooled vector), as Neo's T5/UMT5/Qwen engines return them.
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
from backend.text_processing.t5_engine import T5TextProcessingEngine


class TextDiTEngine(ForgeDiffusionEngine):
    engine_attribute = "text_processing_engine_t5"
    encoder_key = "t5xxl"
    min_length = 256
    is_chroma = False

    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        clip = CLIP(
            model_dict={self.encoder_key: huggingface_components["text_encoder"]},
            tokenizer_dict={self.encoder_key: huggingface_components["tokenizer"]},
        )
        unet = UnetPatcher.from_model(
            model=huggingface_components["transformer"],
            diffusers_scheduler=None,
            k_predictor=PredictionFlux(mu=1.0),
            config=estimated_config,
        )
        setattr(
            self,
            self.engine_attribute,
            self.text_engine(
                getattr(clip.cond_stage_model, self.encoder_key), getattr(clip.tokenizer, self.encoder_key)
            ),
        )
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=VAE(latent_channels=16), clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def text_engine(self, text_encoder: Any, tokenizer: Any) -> Any:
        """The family's prompt engine (default: the T5 layout)."""
        return T5TextProcessingEngine(
            text_encoder=text_encoder, tokenizer=tokenizer, is_chroma=self.is_chroma, min_length=self.min_length
        )

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> torch.Tensor:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        return getattr(self, self.engine_attribute)(prompt)
