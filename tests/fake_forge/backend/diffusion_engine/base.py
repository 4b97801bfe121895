"""``sd_model`` base class and ``forge_objects`` container.

Own re-implementation; mirrors backend/diffusion_engine/base.py: ForgeObjects, ForgeDiffusionEngine
(Forge dfdcbab6).
"""

from __future__ import annotations

from typing import Any


# mirrors backend/diffusion_engine/base.py: ForgeObjects (Forge dfdcbab6)
class ForgeObjects:
    def __init__(self, unet: Any, clip: Any, vae: Any, clipvision: Any) -> None:
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self) -> ForgeObjects:
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


# mirrors backend/diffusion_engine/base.py: ForgeDiffusionEngine (Forge dfdcbab6)
class ForgeDiffusionEngine:
    matched_guesses: list = []

    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        self.model_config = estimated_config
        self.is_inpaint = estimated_config.inpaint_model()
        self.forge_objects: ForgeObjects | None = None
        self.forge_objects_original: ForgeObjects | None = None
        self.forge_objects_after_applying_lora: ForgeObjects | None = None
        self.current_lora_hash = str([])
        self.fix_for_webui_backward_compatibility()

    def set_clip_skip(self, clip_skip: int) -> None:
        pass

    def get_first_stage_encoding(self, x: Any) -> Any:
        return x

    def get_learned_conditioning(self, prompt: list[str]) -> Any:
        pass

    def encode_first_stage(self, x: Any) -> Any:
        return self.forge_objects.vae.encode(x)

    def decode_first_stage(self, x: Any) -> Any:
        return self.forge_objects.vae.decode(x)

    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        return 0, 75

    def is_webui_legacy_model(self) -> bool:
        return self.is_sd1 or self.is_sd2 or self.is_sdxl or self.is_sd3

    def fix_for_webui_backward_compatibility(self) -> None:
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.use_distilled_cfg_scale = False
        self.is_sd1 = False
        self.is_sd2 = False
        self.is_sdxl = False
        self.is_sd3 = False
