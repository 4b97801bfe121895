"""UnetPatcher: the ``forge_objects.unet`` that extensions clone and patch.

Own re-implementation; mirrors backend/patcher/unet.py (Forge dfdcbab6).
"""

from __future__ import annotations

import copy
from typing import Any

from backend.modules.k_model import KModel
from backend.patcher.base import ModelPatcher


# mirrors backend/patcher/unet.py: UnetPatcher (Forge dfdcbab6)
class UnetPatcher(ModelPatcher):
    @classmethod
    def from_model(cls, model: Any, diffusers_scheduler: Any, config: Any, k_predictor: Any = None) -> UnetPatcher:
        kmodel = KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config)
        return UnetPatcher(kmodel, load_device="cpu", offload_device="cpu", current_device="cpu")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling: list = []
        self.extra_concat_condition = None

    def clone(self) -> UnetPatcher:
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        # deep copy, as in Forge: objects stored in model_options (bound methods' self, state objects
        # without __deepcopy__) are duplicated in every clone; plain functions/closures are not
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes: int) -> None:
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_model_patcher_during_sampling(self, model_patcher: ModelPatcher) -> None:
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def add_patched_controlnet(self, cnet: Any) -> None:
        cnet.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = cnet

    def list_controlnets(self) -> list:
        found = []
        link = self.controlnet_linked_list
        while link is not None:
            found.append(link)
            link = link.previous_controlnet
        return found

    def append_model_option(self, k: str, v: Any, ensure_uniqueness: bool = False) -> None:
        values = self.model_options.setdefault(k, [])
        if ensure_uniqueness and v in values:
            return
        values.append(v)  # in place (unlike set_model_sampler_post_cfg_function)

    def append_transformer_option(self, k: str, v: Any, ensure_uniqueness: bool = False) -> None:
        options = self.model_options.setdefault("transformer_options", {})
        values = options.setdefault(k, [])
        if ensure_uniqueness and v in values:
            return
        values.append(v)

    def set_transformer_option(self, k: str, v: Any) -> None:
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def add_sampler_pre_cfg_function(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_model_option("sampler_pre_cfg_function", modifier, ensure_uniqueness)

    def set_memory_peak_estimation_modifier(self, modifier: Any) -> None:
        self.model_options["memory_peak_estimation_modifier"] = modifier

    def add_alphas_cumprod_modifier(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_model_option("alphas_cumprod_modifiers", modifier, ensure_uniqueness)

    def add_block_modifier(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_transformer_option("block_modifiers", modifier, ensure_uniqueness)

    def add_block_inner_modifier(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_transformer_option("block_inner_modifiers", modifier, ensure_uniqueness)

    def add_controlnet_conditioning_modifier(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_transformer_option("controlnet_conditioning_modifiers", modifier, ensure_uniqueness)

    def set_group_norm_wrapper(self, wrapper: Any) -> None:
        self.set_transformer_option("group_norm_wrapper", wrapper)

    def set_controlnet_model_function_wrapper(self, wrapper: Any) -> None:
        self.set_transformer_option("controlnet_model_function_wrapper", wrapper)

    def set_model_replace_all(self, patch: Any, target: str = "attn1") -> None:
        for block_name in ("input", "middle", "output"):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)
