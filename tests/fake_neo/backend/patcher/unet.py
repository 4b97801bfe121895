"""UnetPatcher as in Forge Neo: clones copy ``model_options`` with ``utils.deepcopy_``.

Own re-implementation; mirrors backend/patcher/unet.py (Forge Neo, index id 48299958229:
``clone`` = ``ModelPatcher.clone`` + the UnetPatcher fields) and ``ModelPatcher.clone`` of
backend/patcher/base.py (Forge Neo, index id 66754403095: ``model_options`` through ``utils.deepcopy_``,
which copies only dicts and lists -- functions and state objects are shared, never deep-copied), and
``NunchakuPatcher`` for SVDQ models. Everything else is the simulated Forge's UnetPatcher.
"""

from __future__ import annotations

from typing import Any

from backend import _forge, utils
from backend.modules.k_model import KModel
from backend.nn.svdq import NunchakuModelMixin

_FORGE = _forge.load("backend/patcher/unet.py")


# mirrors backend/patcher/unet.py: UnetPatcher (Forge Neo)
class UnetPatcher(_FORGE.UnetPatcher):
    @classmethod
    def from_model(cls, model: Any, diffusers_scheduler: Any, config: Any, k_predictor: Any = None) -> UnetPatcher:
        kmodel = KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config)
        patcher = NunchakuPatcher if isinstance(kmodel.diffusion_model, NunchakuModelMixin) else cls
        return patcher(kmodel, load_device="cpu", offload_device="cpu", current_device="cpu")

    def clone(self) -> UnetPatcher:
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = utils.deepcopy_(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n


# mirrors backend/patcher/unet.py: NunchakuPatcher (Forge Neo): Nunchaku models move themselves
class NunchakuPatcher(UnetPatcher):
    def load(self, device_to: Any = None, *args: Any, **kwargs: Any) -> None:
        self.model.diffusion_model.to(device_to)

    def detach(self, *args: Any, **kwargs: Any) -> None:
        self.model.diffusion_model.to(self.offload_device)
