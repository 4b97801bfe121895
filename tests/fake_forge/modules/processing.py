"""The generation loop: processing objects, conds with caching, txt2img (+hires) and img2img.

Own re-implementation; mirrors modules/processing.py (Forge dfdcbab6): StableDiffusionProcessing,
StableDiffusionProcessingTxt2Img, StableDiffusionProcessingImg2Img, Processed, create_infotext,
process_images, process_images_inner. Differences: no VAE (the "images" are the final latents), no
model/checkpoint switching or refiner, LoRA/ToMe are no-ops, latent upscalers only for hires, and
img2img takes ``init_latent`` (and an optional latent-size ``image_mask``, 1 = repaint) directly.
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch
from modules import devices, errors, extra_networks, prompt_parser, sd_models, sd_samplers, shared
from modules.sd_models import apply_token_merging
from modules.shared import opts, state

opt_C = 4
opt_f = 8


# mirrors modules/processing.py: get_fixed_seed (Forge dfdcbab6)
def get_fixed_seed(seed: Any) -> Any:
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except Exception:
            seed = random.randrange(4294967294)
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def _quote(text: Any) -> str:
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


# mirrors modules/processing.py: create_infotext (Forge dfdcbab6), the parameter part simplified
def create_infotext(
    p: Any,
    all_prompts: list[str],
    all_seeds: list[int],
    all_subseeds: list[int],
    comments: Any = None,
    iteration: int = 0,
    position_in_batch: int = 0,
    use_main_prompt: bool = False,
    index: int | None = None,
    all_negative_prompts: list[str] | None = None,
) -> str:
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]

    params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": None,
        "CFG scale": p.cfg_scale,
        "Distilled CFG Scale": p.distilled_cfg_scale if getattr(p.sd_model, "use_distilled_cfg_scale", False) else None,
        "Seed": all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model": p.sd_model_name,
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
    }
    context = dict(
        p=p,
        index=index,
        prompt_text=prompt_text,
        negative_prompt=negative_prompt,
        iteration=iteration,
        position_in_batch=position_in_batch,
        all_prompts=all_prompts,
        all_seeds=all_seeds,
        all_subseeds=all_subseeds,
        use_main_prompt=use_main_prompt,
        comments=comments,
    )
    for key, value in list(params.items()):
        try:
            if isinstance(value, list):
                params[key] = value[index]
            elif callable(value):
                params[key] = value(**context)
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            params[key] = None
    line = ", ".join(f"{k}: {_quote(v)}" if k != v else k for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative}\n{line}".strip()


# mirrors modules/processing.py: StableDiffusionProcessing (Forge dfdcbab6)
class StableDiffusionProcessing:
    _defaults: dict[str, Any] = dict(
        outpath_samples=None,
        outpath_grids=None,
        prompt="",
        prompt_for_display=None,
        negative_prompt="",
        styles=None,
        seed=-1,
        subseed=-1,
        subseed_strength=0,
        seed_resize_from_h=-1,
        seed_resize_from_w=-1,
        seed_enable_extras=True,
        sampler_name=None,
        scheduler=None,
        batch_size=1,
        n_iter=1,
        steps=50,
        cfg_scale=7.0,
        distilled_cfg_scale=3.5,
        width=512,
        height=512,
        restore_faces=None,
        tiling=None,
        do_not_save_samples=False,
        do_not_save_grid=False,
        extra_generation_params=None,
        overlay_images=None,
        eta=None,
        do_not_reload_embeddings=False,
        denoising_strength=None,
        ddim_discretize=None,
        s_min_uncond=None,
        s_churn=None,
        s_tmax=None,
        s_tmin=None,
        s_noise=None,
        override_settings=None,
        override_settings_restore_afterwards=True,
        sampler_index=None,
        refiner_checkpoint=None,
        refiner_switch_at=None,
        token_merging_ratio=0,
        token_merging_ratio_hr=0,
        disable_extra_networks=False,
        firstpass_image=None,
        comments=None,
    )

    cached_uc: list = [None, None, None]
    cached_c: list = [None, None, None]

    def __init__(self, sd_model: Any = None, scripts: Any = None, script_args: Any = None, **kwargs: Any) -> None:
        defaults: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            defaults.update(klass.__dict__.get("_defaults", {}))
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise TypeError(f"unexpected processing arguments: {unknown}")
        for key, value in {**defaults, **kwargs}.items():
            setattr(self, key, value)
        # fields with init=False in Forge's dataclass
        self.scripts_value = None
        self.script_args_value = None
        self.scripts_setup_complete = False
        self.sampler = None
        self.is_using_inpainting_conditioning = False
        self.paste_to = None
        self.is_hr_pass = False
        self.c = None
        self.uc = None
        self.rng = None
        self.step_multiplier = 1
        self.color_corrections = None
        self.all_prompts = None
        self.all_negative_prompts = None
        self.all_seeds = None
        self.all_subseeds = None
        self.iteration = 0
        self.main_prompt = None
        self.main_negative_prompt = None
        self.prompts = None
        self.negative_prompts = None
        self.seeds = None
        self.subseeds = None
        self.extra_network_data = None
        self.user = None
        self.sd_model_name = None
        self.sd_model_hash = None
        self.sd_vae_name = None
        self.sd_vae_hash = None
        self.is_api = False
        self.firstpass_steps = None
        self.scripts = scripts
        self.script_args = script_args
        self.__post_init__()

    def __post_init__(self) -> None:
        self.comments = {}
        if self.styles is None:
            self.styles = []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or ()
        self.refiner_checkpoint_info = None
        if not self.seed_enable_extras:
            self.subseed = -1
            self.subseed_strength = 0
            self.seed_resize_from_h = 0
            self.seed_resize_from_w = 0
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c
        self.extra_result_images = []
        self.latents_after_sampling = []
        self.pixels_after_sampling = []
        self.modified_noise = None

    @property
    def sd_model(self) -> Any:
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value: Any) -> None:
        pass

    @property
    def scripts(self) -> Any:
        return self.scripts_value

    @scripts.setter
    def scripts(self, value: Any) -> None:
        self.scripts_value = value

    @property
    def script_args(self) -> Any:
        return self.script_args_value

    @script_args.setter
    def script_args(self, value: Any) -> None:
        self.script_args_value = value

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def clear_prompt_cache(self) -> None:
        self.cached_c = [None, None, None]
        self.cached_uc = [None, None, None]
        StableDiffusionProcessing.cached_c = [None, None, None]
        StableDiffusionProcessing.cached_uc = [None, None, None]

    def fill_fields_from_opts(self) -> None:
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else opts.s_tmax) or float("inf")
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise

    # mirrors modules/processing.py: StableDiffusionProcessing.txt2img_image_conditioning and the
    # module-level txt2img_image_conditioning (Forge dfdcbab6). The fake's VAE is the identity on
    # latent-sized "images", so the grey image is made at the latent's size.
    def txt2img_image_conditioning(
        self, x: torch.Tensor, width: int | None = None, height: int | None = None
    ) -> torch.Tensor:
        self.is_using_inpainting_conditioning = self.sd_model.is_inpaint
        if self.sd_model.is_inpaint:  # a mask of ones and the latent of a grey image
            grey = torch.ones(x.shape[0], x.shape[1], *x.shape[-2:], device=x.device) * 0.5
            image_conditioning = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(grey))
            image_conditioning = torch.nn.functional.pad(image_conditioning, (0, 0, 0, 0, 1, 0), value=1.0)
            return image_conditioning.to(x.dtype)
        # not an inpainting model: a dummy that never matches the latent's shape (so no c_concat)
        return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)

    # mirrors modules/processing.py: StableDiffusionProcessing.inpainting_image_conditioning (Forge dfdcbab6),
    # for a tensor mask (1 = repaint)
    def inpainting_image_conditioning(
        self, source_image: torch.Tensor, latent_image: torch.Tensor, image_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.is_using_inpainting_conditioning = True
        if image_mask is not None:
            conditioning_mask = image_mask.reshape(1, 1, *image_mask.shape[-2:])
        else:
            conditioning_mask = source_image.new_ones(1, 1, *source_image.shape[-2:])
        conditioning_mask = conditioning_mask.to(device=source_image.device, dtype=source_image.dtype)
        conditioning_image = torch.lerp(
            source_image,
            source_image * (1.0 - conditioning_mask),
            getattr(self, "inpainting_mask_weight", opts.inpainting_mask_weight),
        )
        encoded = self.sd_model.encode_first_stage(conditioning_image)
        conditioning_image = self.sd_model.get_first_stage_encoding(encoded)
        conditioning_mask = torch.nn.functional.interpolate(conditioning_mask, size=latent_image.shape[-2:])
        conditioning_mask = conditioning_mask.expand(conditioning_image.shape[0], -1, -1, -1)
        return torch.cat([conditioning_mask, conditioning_image], dim=1)

    # mirrors modules/processing.py: StableDiffusionProcessing.img2img_image_conditioning (Forge dfdcbab6)
    def img2img_image_conditioning(
        self, source_image: torch.Tensor, latent_image: torch.Tensor, image_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.sd_model.is_inpaint:
            return self.inpainting_image_conditioning(source_image, latent_image, image_mask=image_mask)
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        pass

    def sample(
        self,
        conditioning: Any,
        unconditional_conditioning: Any,
        seeds: list[int],
        subseeds: list[int],
        subseed_strength: float,
        prompts: list[str],
    ) -> torch.Tensor:
        raise NotImplementedError()

    def close(self) -> None:
        self.sampler = None
        self.c = None
        self.uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        if for_hr:
            return (
                self.token_merging_ratio_hr
                or opts.token_merging_ratio_hr
                or self.token_merging_ratio
                or opts.token_merging_ratio
            )
        return self.token_merging_ratio or opts.token_merging_ratio

    def setup_prompts(self) -> None:
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(
                f"Received a different number of prompts ({len(self.all_prompts)}) and negative prompts "
                f"({len(self.all_negative_prompts)})"
            )
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [
            shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles) for x in self.all_negative_prompts
        ]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def cached_params(
        self,
        required_prompts: Any,
        steps: int,
        extra_network_data: Any,
        hires_steps: int | None = None,
        use_old_scheduling: bool = False,
    ) -> tuple:
        """Parameters that invalidate the cond cache if changed."""
        return (
            required_prompts,
            self.distilled_cfg_scale,
            getattr(self, "hr_distilled_cfg", None),
            steps,
            hires_steps,
            use_old_scheduling,
            opts.CLIP_stop_at_last_layers,
            shared.sd_model.sd_checkpoint_info,
            extra_network_data,
            opts.sdxl_crop_left,
            opts.sdxl_crop_top,
            self.width,
            self.height,
            opts.fp8_storage,
            opts.cache_fp16_weight,
            opts.emphasis,
        )

    def get_conds_with_caching(
        self,
        function: Any,
        required_prompts: Any,
        steps: int,
        caches: list,
        extra_network_data: Any,
        hires_steps: int | None = None,
    ) -> Any:
        """``function(shared.sd_model, required_prompts, steps, hires_steps, use_old_scheduling)``, cached in
        the first of ``caches`` ([params, result(, extra params)] lists) and looked up in all of them."""
        params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps, opts.use_old_scheduling)
        for cache in caches:
            if cache[0] is not None and params == cache[0]:
                if len(cache) > 2:
                    shared.sd_model.extra_generation_params.update(cache[2])
                return cache[1]

        import backend.text_processing.classic_engine as classic_engine

        cache = caches[0]
        with devices.autocast():
            shared.sd_model.set_clip_skip(int(opts.CLIP_stop_at_last_layers))
            cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps, opts.use_old_scheduling)
            last = classic_engine.last_extra_generation_params.copy()
            shared.sd_model.extra_generation_params.update(last)
            if len(cache) > 2:
                cache[2] = last
            classic_engine.last_extra_generation_params.clear()
        cache[0] = params
        return cache[1]

    def setup_conds(self) -> None:
        prompts = prompt_parser.SdConditioning(
            self.prompts, width=self.width, height=self.height, distilled_cfg_scale=self.distilled_cfg_scale
        )
        negative_prompts = prompt_parser.SdConditioning(
            self.negative_prompts,
            width=self.width,
            height=self.height,
            is_negative_prompt=True,
            distilled_cfg_scale=self.distilled_cfg_scale,
        )
        sampler_config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps

        if self.cfg_scale == 1:
            self.uc = None
            print("Skipping unconditional conditioning when CFG = 1. Negative Prompts are ignored.")
        else:
            self.uc = self.get_conds_with_caching(
                prompt_parser.get_learned_conditioning,
                negative_prompts,
                total_steps,
                [self.cached_uc],
                self.extra_network_data,
            )
        self.c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            prompts,
            total_steps,
            [self.cached_c],
            self.extra_network_data,
        )

    def get_conds(self) -> tuple:
        return self.c, self.uc

    def parse_extra_network_prompts(self) -> None:
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def save_samples(self) -> bool:
        return False


# mirrors modules/processing.py: Processed (Forge dfdcbab6), the commonly read fields
class Processed:
    def __init__(
        self,
        p: StableDiffusionProcessing,
        images_list: list,
        seed: int = -1,
        info: str = "",
        subseed: int | None = None,
        all_prompts: list | None = None,
        all_negative_prompts: list | None = None,
        all_seeds: list | None = None,
        all_subseeds: list | None = None,
        index_of_first_image: int = 0,
        infotexts: list | None = None,
        comments: str = "",
        extra_images_list: list | None = None,
    ) -> None:
        self.images = images_list
        self.extra_images = extra_images_list or []
        self.prompt = p.prompt if not isinstance(p.prompt, list) else p.prompt[0]
        self.negative_prompt = p.negative_prompt if not isinstance(p.negative_prompt, list) else p.negative_prompt[0]
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def infotext(self, p: StableDiffusionProcessing, index: int) -> str:
        return create_infotext(
            p,
            self.all_prompts,
            self.all_seeds,
            self.all_subseeds,
            comments=[],
            position_in_batch=index % self.batch_size,
            iteration=index // self.batch_size,
        )


# mirrors modules/processing.py: StableDiffusionProcessingTxt2Img (Forge dfdcbab6)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    _defaults: dict[str, Any] = dict(
        enable_hr=False,
        denoising_strength=0.75,
        firstphase_width=0,
        firstphase_height=0,
        hr_scale=2.0,
        hr_upscaler=None,
        hr_second_pass_steps=0,
        hr_resize_x=0,
        hr_resize_y=0,
        hr_checkpoint_name=None,
        hr_additional_modules=None,
        hr_sampler_name=None,
        hr_scheduler=None,
        hr_prompt="",
        hr_negative_prompt="",
        hr_cfg=1.0,
        hr_distilled_cfg=3.5,
        force_task_id=None,
    )

    cached_hr_uc: list = [None, None, None]
    cached_hr_c: list = [None, None, None]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hr_checkpoint_info = None
        self.hr_upscale_to_x = 0
        self.hr_upscale_to_y = 0
        self.truncate_x = 0
        self.truncate_y = 0
        self.applied_old_hires_behavior_to = None
        self.latent_scale_mode = None
        self.hr_c = None
        self.hr_uc = None
        self.all_hr_prompts = None
        self.all_hr_negative_prompts = None
        self.hr_prompts = None
        self.hr_negative_prompts = None
        self.hr_extra_network_data = None
        if self.firstphase_width != 0 or self.firstphase_height != 0:
            self.hr_upscale_to_x = self.width
            self.hr_upscale_to_y = self.height
            self.width = self.firstphase_width
            self.height = self.firstphase_height
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c

    def calculate_target_resolution(self) -> None:
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
        else:
            self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
            if self.hr_resize_y == 0:
                self.hr_upscale_to_x = self.hr_resize_x
                self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
            elif self.hr_resize_x == 0:
                self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
                self.hr_upscale_to_y = self.hr_resize_y
            else:
                self.hr_upscale_to_x = self.hr_resize_x
                self.hr_upscale_to_y = self.hr_resize_y

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
            self.extra_generation_params["Hires sampler"] = self.hr_sampler_name

        def get_hr_prompt(p: Any, index: int, prompt_text: str, **kwargs: Any) -> str | None:
            hr_prompt = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        def get_hr_negative_prompt(p: Any, index: int, negative_prompt: str, **kwargs: Any) -> str | None:
            hr_negative_prompt = p.all_hr_negative_prompts[index]
            return hr_negative_prompt if hr_negative_prompt != negative_prompt else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt
        self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt
        self.extra_generation_params["Hires CFG Scale"] = self.hr_cfg
        self.extra_generation_params["Hires Distilled CFG Scale"] = None
        self.extra_generation_params["Hires schedule type"] = None
        if self.hr_scheduler is None:
            self.hr_scheduler = self.scheduler
        upscaler = self.hr_upscaler if self.hr_upscaler is not None else shared.latent_upscale_default_mode
        self.latent_scale_mode = shared.latent_upscale_modes.get(upscaler, None)
        if self.latent_scale_mode is None:
            raise Exception(f"could not find upscaler named {self.hr_upscaler} (the fake has latent upscalers only)")
        self.calculate_target_resolution()
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
        if self.hr_upscaler is not None:
            self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

    def sample(
        self,
        conditioning: Any,
        unconditional_conditioning: Any,
        seeds: list[int],
        subseeds: list[int],
        subseed_strength: float,
        prompts: list[str],
    ) -> torch.Tensor:
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)

        x = self.rng.next()
        # each pass starts from the unpatched UnetPatcher (clones made by scripts are dropped)
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        if self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None

        samples = self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(x)
        )
        del x
        if not self.enable_hr:
            return samples
        if self.sd_model.use_distilled_cfg_scale:
            self.extra_generation_params["Hires Distilled CFG Scale"] = self.hr_distilled_cfg
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(
        self,
        samples: torch.Tensor,
        decoded_samples: Any,
        seeds: list[int],
        subseeds: list[int],
        subseed_strength: float,
        prompts: list[str],
    ) -> torch.Tensor:
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        target_width, target_height = self.hr_upscale_to_x, self.hr_upscale_to_y

        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(
            samples,
            size=(target_height // opt_f, target_width // opt_f),
            mode=self.latent_scale_mode["mode"],
            antialias=self.latent_scale_mode["antialias"],
        )
        image_conditioning = self.txt2img_image_conditioning(samples)
        shared.state.nextjob()

        samples = samples[
            :,
            :,
            self.truncate_y // 2 : samples.shape[2] - (self.truncate_y + 1) // 2,
            self.truncate_x // 2 : samples.shape[3] - (self.truncate_x + 1) // 2,
        ]
        from modules import rng

        self.rng = rng.ImageRNG(
            samples.shape[1:], self.seeds, subseeds=self.subseeds, subseed_strength=self.subseed_strength
        )
        noise = self.rng.next()

        if not self.disable_extra_networks:
            extra_networks.activate(self, self.hr_extra_network_data)
        self.calculate_hr_conds()

        if self.scripts is not None:
            self.scripts.before_hr(self)
            # called twice, as in Forge: this first call sees the first pass's (patched) unet ...
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)

        # ... then the objects are reset and the second call is the one that counts
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        apply_token_merging(self.sd_model, self.get_token_merging_ratio(for_hr=True))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)

        if self.modified_noise is not None:
            noise = self.modified_noise
            self.modified_noise = None

        samples = self.sampler.sample_img2img(
            self,
            samples,
            noise,
            self.hr_c,
            self.hr_uc,
            steps=self.hr_second_pass_steps or self.steps,
            image_conditioning=image_conditioning,
        )
        self.sampler = None
        self.is_hr_pass = False
        return samples

    def close(self) -> None:
        super().close()
        self.hr_c = None
        self.hr_uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
            StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]

    def setup_prompts(self) -> None:
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        if isinstance(self.hr_prompt, list):
            self.all_hr_prompts = self.hr_prompt
        else:
            self.all_hr_prompts = self.batch_size * self.n_iter * [self.hr_prompt]
        if isinstance(self.hr_negative_prompt, list):
            self.all_hr_negative_prompts = self.hr_negative_prompt
        else:
            self.all_hr_negative_prompts = self.batch_size * self.n_iter * [self.hr_negative_prompt]

    def calculate_hr_conds(self) -> None:
        if self.hr_c is not None:
            return
        hr_prompts = prompt_parser.SdConditioning(
            self.hr_prompts,
            width=self.hr_upscale_to_x,
            height=self.hr_upscale_to_y,
            distilled_cfg_scale=self.hr_distilled_cfg,
        )
        hr_negative_prompts = prompt_parser.SdConditioning(
            self.hr_negative_prompts,
            width=self.hr_upscale_to_x,
            height=self.hr_upscale_to_y,
            is_negative_prompt=True,
            distilled_cfg_scale=self.hr_distilled_cfg,
        )
        sampler_config = sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total_steps = sampler_config.total_steps(steps) if sampler_config else steps

        if self.hr_cfg == 1:
            self.hr_uc = None
            print("Skipping unconditional conditioning (HR pass) when CFG = 1. Negative Prompts are ignored.")
        else:
            self.hr_uc = self.get_conds_with_caching(
                prompt_parser.get_learned_conditioning,
                hr_negative_prompts,
                self.firstpass_steps,
                [self.cached_hr_uc, self.cached_uc],
                self.hr_extra_network_data,
                total_steps,
            )
        self.hr_c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            hr_prompts,
            self.firstpass_steps,
            [self.cached_hr_c, self.cached_c],
            self.hr_extra_network_data,
            total_steps,
        )

    def setup_conds(self) -> None:
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_uc = None
        self.hr_c = None
        if self.enable_hr and self.hr_checkpoint_info is None:
            self.calculate_hr_conds()

    def get_conds(self) -> tuple:
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return super().get_conds()

    def parse_extra_network_prompts(self) -> None:
        super().parse_extra_network_prompts()
        if self.enable_hr:
            start, end = self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size
            self.hr_prompts = self.all_hr_prompts[start:end]
            self.hr_negative_prompts = self.all_hr_negative_prompts[start:end]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)


# mirrors modules/processing.py: StableDiffusionProcessingImg2Img (Forge dfdcbab6), latent in / latent out
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    _defaults: dict[str, Any] = dict(
        init_images=None,
        init_latent=None,
        image_mask=None,
        resize_mode=0,
        denoising_strength=0.75,
        image_cfg_scale=None,
        mask=None,
        initial_noise_multiplier=None,
        hr_distilled_cfg=3.5,
        force_task_id=None,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.nmask = None
        self.image_conditioning = None
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = opts.initial_noise_multiplier

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        if self.init_latent is None:
            raise ValueError("the fake img2img needs init_latent (a latent tensor)")
        latent = self.init_latent
        if latent.shape[0] != self.batch_size:
            latent = latent[:1].repeat(self.batch_size, 1, 1, 1)
        self.init_latent = latent
        if self.image_mask is not None:
            latmask = self.image_mask.to(latent)  # 1 = repaint
            self.mask = 1.0 - latmask
            self.nmask = latmask
        # The fake's "images" are latents: the source image is the init latent itself.
        self.image_conditioning = self.img2img_image_conditioning(latent, latent, self.image_mask)

    def sample(
        self,
        conditioning: Any,
        unconditional_conditioning: Any,
        seeds: list[int],
        subseeds: list[int],
        subseed_strength: float,
        prompts: list[str],
    ) -> torch.Tensor:
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        if self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None
        samples = self.sampler.sample_img2img(
            self,
            self.init_latent,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=self.image_conditioning,
        )
        if self.mask is not None:
            blended = samples * self.nmask + self.init_latent * self.mask
            if self.scripts is not None:
                from modules import scripts

                mba = scripts.MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended)
                self.scripts.on_mask_blend(self, mba)
                blended = mba.blended_latent
            samples = blended
        return samples


# mirrors modules/processing.py: process_images (Forge dfdcbab6)
def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings if k in opts.data}
    try:
        for key, value in p.override_settings.items():
            setattr(opts, key, value)
        p.sd_model, _ = sd_models.forge_model_reload()
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for key in p.override_settings:
                if key in stored_opts:
                    setattr(opts, key, stored_opts[key])
                else:
                    opts.data.pop(key, None)


def _decode(sd_model: Any, samples: torch.Tensor) -> list[torch.Tensor]:
    return [sd_model.decode_first_stage(samples[i : i + 1])[0] for i in range(samples.shape[0])]


# mirrors modules/processing.py: process_images_inner (Forge dfdcbab6)
def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    if isinstance(p.prompt, list):
        assert len(p.prompt) > 0
    else:
        assert p.prompt is not None

    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.sd_model.comments = []
    p.sd_model.extra_generation_params = {}

    p.fill_fields_from_opts()
    p.setup_prompts()
    p.all_seeds = (
        seed
        if isinstance(seed, list)
        else [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    )
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts: list[str] = []
    output_images: list[torch.Tensor] = []
    with torch.inference_mode():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break

            sd_models.forge_model_reload()
            p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size : (n + 1) * p.batch_size]

            from modules import rng, scripts

            latent_channels = shared.sd_model.forge_objects.vae.latent_channels
            p.rng = rng.ImageRNG(
                (latent_channels, p.height // opt_f, p.width // opt_f),
                p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
            )

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break

            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)
            p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()

            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()
            p.extra_generation_params.update(p.sd_model.extra_generation_params)
            for comment in p.sd_model.comments:
                p.comment(comment)

            samples = p.sample(
                conditioning=p.c,
                unconditional_conditioning=p.uc,
                seeds=p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
                prompts=p.prompts,
            )
            for x_sample in samples:
                p.latents_after_sampling.append(x_sample)

            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples

            x_samples = torch.stack(_decode(p.sd_model, samples)).float()
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
                p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples = batch_params.images

            for i, image in enumerate(x_samples):
                p.batch_index = i
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image, i + p.iteration * p.batch_size)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                p.pixels_after_sampling.append(image)
                infotexts.append(
                    create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i, all_negative_prompts=p.negative_prompts)
                )
                output_images.append(image)

        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))
        p.color_corrections = None

    res = Processed(
        p,
        images_list=output_images,
        seed=p.all_seeds[0],
        info=infotexts[0],
        subseed=p.all_subseeds[0],
        index_of_first_image=0,
        infotexts=infotexts,
        extra_images_list=p.extra_result_images,
    )
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
