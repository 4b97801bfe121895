"""ModelPatcher: per-clone model options and object patches.

Own re-implementation; mirrors backend/patcher/base.py (Forge dfdcbab6). LoRA weight patching is
not simulated (``lora_patches`` is kept and copied, never applied).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from backend import memory_management, utils


# mirrors backend/patcher/base.py: set_model_options_patch_replace (Forge dfdcbab6)
def set_model_options_patch_replace(
    model_options: dict, patch: Any, name: str, block_name: str, number: int, transformer_index: int | None = None
) -> dict:
    options = model_options["transformer_options"].copy()
    replaces = dict(options.get("patches_replace", {}))
    per_name = dict(replaces.get(name, {}))
    key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    per_name[key] = patch
    replaces[name] = per_name
    options["patches_replace"] = replaces
    model_options["transformer_options"] = options
    return model_options


# mirrors backend/patcher/base.py: set_model_options_post_cfg_function (Forge dfdcbab6)
def set_model_options_post_cfg_function(
    model_options: dict, post_cfg_function: Any, disable_cfg1_optimization: bool = False
) -> dict:
    # a new list every time (never appended in place)
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [
        post_cfg_function
    ]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


# mirrors backend/patcher/base.py: set_model_options_pre_cfg_function (Forge dfdcbab6)
def set_model_options_pre_cfg_function(
    model_options: dict, pre_cfg_function: Any, disable_cfg1_optimization: bool = False
) -> dict:
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


# mirrors backend/patcher/base.py: ModelPatcher (Forge dfdcbab6)
class ModelPatcher:
    def __init__(
        self,
        model: Any,
        load_device: Any,
        offload_device: Any,
        size: int = 0,
        current_device: Any = None,
        **kwargs: Any,
    ) -> None:
        self.size = size
        self.model = model
        self.lora_patches: dict = {}
        self.object_patches: dict = {}
        self.object_patches_backup: dict = {}
        self.model_options: dict = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = offload_device if current_device is None else current_device

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = memory_management.module_size(self.model)
        return self.size

    def clone(self) -> ModelPatcher:
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other: Any) -> bool:
        return hasattr(other, "model") and self.model is other.model

    def has_online_lora(self) -> bool:
        return any(online for (_, _, _, online) in self.lora_patches)

    def memory_required(self, input_shape: list[int]) -> float:
        return self.model.memory_required(input_shape=input_shape)

    def set_model_sampler_cfg_function(
        self, sampler_cfg_function: Any, disable_cfg1_optimization: bool = False
    ) -> None:
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            # old style fn(cond, uncond, cond_scale)
            self.model_options["sampler_cfg_function"] = lambda args: sampler_cfg_function(
                args["cond"], args["uncond"], args["cond_scale"]
            )
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(
        self, post_cfg_function: Any, disable_cfg1_optimization: bool = False
    ) -> None:
        self.model_options = set_model_options_post_cfg_function(
            self.model_options, post_cfg_function, disable_cfg1_optimization
        )

    def set_model_sampler_pre_cfg_function(
        self, pre_cfg_function: Any, disable_cfg1_optimization: bool = False
    ) -> None:
        self.model_options = set_model_options_pre_cfg_function(
            self.model_options, pre_cfg_function, disable_cfg1_optimization
        )

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Any) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_vae_encode_wrapper(self, wrapper_function: Any) -> None:
        self.model_options["model_vae_encode_wrapper"] = wrapper_function

    def set_model_vae_decode_wrapper(self, wrapper_function: Any) -> None:
        self.model_options["model_vae_decode_wrapper"] = wrapper_function

    def set_model_vae_regulation(self, vae_regulation: Any) -> None:
        self.model_options["model_vae_regulation"] = vae_regulation

    def set_model_denoise_mask_function(self, denoise_mask_function: Any) -> None:
        self.model_options["denoise_mask_function"] = denoise_mask_function

    def set_model_patch(self, patch: Any, name: str) -> None:
        options = self.model_options["transformer_options"]
        patches = options.setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]

    def set_model_patch_replace(
        self, patch: Any, name: str, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.model_options = set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index=transformer_index
        )

    def set_model_attn1_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return utils.get_attr(self.model, name)

    def model_dtype(self) -> Any:
        return getattr(self.model, "computation_dtype", None)

    def forge_patch_model(self, target_device: Any = None) -> Any:
        for name, obj in self.object_patches.items():
            if name not in self.object_patches_backup:
                self.object_patches_backup[name] = utils.get_attr(self.model, name)
            utils.set_attr_raw(self.model, name, obj)
        if target_device is not None:
            self.current_device = target_device
        return self.model

    def forge_unpatch_model(self, target_device: Any = None) -> None:
        if target_device is not None:
            self.current_device = target_device
        for name, original in self.object_patches_backup.items():
            utils.set_attr_raw(self.model, name, original)
        self.object_patches_backup = {}
