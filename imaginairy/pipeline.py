"""One prompt -> images, in the five steps of ARCHITECTURE.md: conditioning, initial latent, sampling, decoding,
post-processing. `generate` reads them top to bottom; each step is a function with plain inputs and outputs."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import torch
from PIL import Image

from imaginairy.control.guidance import ControlStack
from imaginairy.errors import InvalidInputError, NonFiniteOutputError
from imaginairy.masking.inpaint import Edit, prepare_edit
from imaginairy.models.runtime import model_device, model_dtype, precision_context, submodel_on, unet_function
from imaginairy.modules.autoencoder import LATENT_CHANNELS, LATENT_SCALE
from imaginairy.modules.diffusion import LatentDiffusion
from imaginairy.modules.layers import set_tile_mode
from imaginairy.modules.tiling import UNTILED_MAX_LATENT_SIDE
from imaginairy.prompts.conditioning import encode_conditioning
from imaginairy.prompts.embeddings import find_embeddings
from imaginairy.samplers import Conditioning, NoiseSchedule, sample
from imaginairy.samplers.table import DEFAULT_SCHEDULE
from imaginairy.schema import ImaginePrompt, ImagineResult, WeightedPrompt
from imaginairy.settings import Settings
from imaginairy.utils.images import pil_to_tensor, tensor_to_pil

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, torch.Tensor], "bool | None"]


def resolve_size(prompt: ImaginePrompt, model: LatentDiffusion) -> ImaginePrompt:
    """The prompt with width and height filled in from the model's default size where the user left them out."""
    size = model.settings.default_size
    return dataclasses.replace(prompt, width=prompt.width or size, height=prompt.height or size)


@torch.inference_mode()
def generate(
    prompt: ImaginePrompt,
    model: LatentDiffusion,
    *,
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    device: torch.device | None = None,
    metadata: dict | None = None,
    settings: Settings | None = None,
) -> ImagineResult:
    """`device` is where the networks run; by default the model's. With memory mode "low" the model waits on the CPU
    and each submodel (text encoder, UNet, VAE) is moved to `device` only while it runs. `metadata` (the
    settings to embed in saved files) is built from the prompt when not given; `settings` (safety mode, model
    folders) are read from the environment when not given."""
    settings = settings if settings is not None else Settings.from_environment()
    device = torch.device(device) if device is not None else model_device(model)
    edit = prepare_edit(prompt, model.settings.default_size, device, settings.clipseg_model)
    prompt = dataclasses.replace(prompt, width=edit.width, height=edit.height)
    if edit.init_image is not None and prompt.init_image_strength >= 1:
        logger.info("init image strength is 1: the init image is returned unchanged")
        return result_of(prompt, {"generated": edit.unchanged_image}, metadata)
    controls, hints = prepare_controls(prompt, model, edit, device)
    latent = generate_latent(prompt, model, edit, progress_callback=progress_callback, cancel_event=cancel_event,
                             device=device, controls=controls)
    decoded = edit.composite(decode(prompt, model, latent, device))
    images, notes = postprocess(decoded, prompt, latent.device, settings)
    result = result_of(prompt, images, metadata)
    result.metadata.update(notes)
    result.images.update(edit.finish(result.img))
    result.images.update(hints)
    return result


def result_of(prompt: ImaginePrompt, images: dict[str, Image.Image], metadata: dict | None) -> ImagineResult:
    if metadata is None:
        from imaginairy.utils.metadata import build_metadata

        metadata = build_metadata(prompt, *images["generated"].size)
    return ImagineResult(images=images, prompt=prompt, metadata=dict(metadata))


@torch.inference_mode()
def generate_latent(
    prompt: ImaginePrompt,
    model: LatentDiffusion,
    edit: Edit | None = None,
    *,
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    device: torch.device | None = None,
    controls: ControlStack | None = None,
) -> torch.Tensor:
    """Steps 1-3: the final latent (float32) for a prompt whose size is resolved; `edit` and `controls` are the
    prompt's (`prepare_edit`, `prepare_controls`), prepared here when not given.

    A 4-channel model blends the edit's kept region back at every step; an inpainting (9-channel) model is
    conditioned on the edit's mask and masked image instead (on "regenerate everything" without masks).
    """
    device = torch.device(device) if device is not None else model_device(model)
    edit = edit if edit is not None else prepare_edit(prompt, model.settings.default_size, device)
    if model.is_sdxl:
        check_sdxl_inputs(model, prompt, edit.init_image)
    generator = torch.Generator("cpu").manual_seed(prompt.seed)
    noise = initial_noise(generator, prompt.width, prompt.height).to(device)
    set_tile_mode(model, prompt.tile_mode)
    with precision_context(prompt.precision, device):
        cond, uncond = text_conditioning(prompt, model, device)
        init_latent, unet_inputs = image_conditioning(prompt, model, edit, needs_tiles(noise), device)
        controls = controls if controls is not None else prepare_controls(prompt, model, edit, device)[0]
        if controls is not None:
            unet_inputs["control"] = controls
        schedule = NoiseSchedule(model.settings.linear_start, model.settings.linear_end, model.settings.num_timesteps)
        with submodel_on(model.model, device, prompt.memory_mode):
            return sample(
                prompt.sampler_type,
                unet_function(model),
                schedule,
                noise=noise,
                steps=prompt.steps,
                cond=cond,
                uncond=uncond,
                guidance_scale=prompt.prompt_strength,
                prediction_type=model.settings.prediction_type,
                sigma_schedule=sampling_schedule(prompt, model),
                init_latent=init_latent,
                denoise_strength=1.0 - prompt.init_image_strength if init_latent is not None else 1.0,
                mask=None if model.settings.is_inpainting else edit.sampler_mask(),
                ddim_eta=prompt.ddim_eta,
                unet_inputs=unet_inputs,
                generator=generator,
                callback=progress_callback,
                cancel_event=cancel_event,
            )


def text_conditioning(
    prompt: ImaginePrompt, model: LatentDiffusion, device: torch.device
) -> tuple[Conditioning, Conditioning]:
    """Step 1: (cond, uncond) of the prompts and negative prompts. SD 1/2: A1111 syntax, 75-token chunks,
    textual-inversion embeddings and clip skip (imaginairy.prompts); SDXL: the weighted text embeddings of both
    encoders with the added embedding `y` (see `sdxl_conditioning`)."""
    with submodel_on(model.text_encoder, device, prompt.memory_mode):
        if model.is_sdxl:
            cond, cond_pooled = weighted_text_conditioning(model, prompt.prompts)
            uncond, uncond_pooled = weighted_text_conditioning(model, prompt.negative_prompts)
            return sdxl_conditioning(model, prompt, cond, uncond, cond_pooled, uncond_pooled)
        text = encode_conditioning(
            model.cond_stage_model,
            prompt.prompts,
            prompt.negative_prompts,
            syntax=prompt.prompt_syntax,
            embedding_paths=prompt.embeddings,
            clip_skip=prompt.clip_skip,
        )
    return Conditioning(text.cond), Conditioning(text.uncond)


def image_conditioning(
    prompt: ImaginePrompt, model: LatentDiffusion, edit: Edit, tiled: bool, device: torch.device
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Step 2: (the init latent or None, the UNet inputs every model call shares). A 9-channel inpainting UNet
    takes the edit's mask and masked-image latent as `concat`."""
    init_latent, unet_inputs = None, {}
    with submodel_on(model.first_stage_model, device, prompt.memory_mode):
        if edit.init_image is not None:
            pixels = pil_to_tensor(edit.init_image).to(device=device, dtype=model_dtype(model))
            init_latent = model.encode_image(pixels, tiled=tiled).float()
        if model.settings.is_inpainting:
            mask, masked_image = edit.inpainting_inputs()
            masked_latent = model.encode_image(masked_image.to(device=device, dtype=model_dtype(model))).float()
            unet_inputs["concat"] = torch.cat([mask.to(device), masked_latent], dim=1)
    return init_latent, unet_inputs


def prepare_controls(
    prompt: ImaginePrompt, model: LatentDiffusion, edit: Edit, device: torch.device
) -> tuple[ControlStack | None, dict[str, Image.Image]]:
    """Step 2: the prompt's ControlNets, each with its hint at the generation size made from its control image (or
    the init image), as one UNet input (None without control inputs); and the hints by result image kind
    ("control", then "control-2", ...)."""
    if not prompt.control_inputs:
        return None, {}
    from imaginairy.control.guidance import Control
    from imaginairy.control.modes import CONTROL_MODES
    from imaginairy.control.preprocess import hint_tensor, make_hint
    from imaginairy.models.controlnets import check_fits, load_controlnet

    dtype = model_dtype(model)
    controls, hints = [], {}
    for index, control in enumerate(prompt.control_inputs):
        source = control.image.as_pil() if control.image is not None else edit.init_image
        hint = make_hint(control.mode, source, prompt.width, prompt.height, preprocess=control.preprocess,
                         canny_thresholds=control.canny_thresholds)
        location = control.model or CONTROL_MODES[control.mode].weights
        controlnet = load_controlnet(str(location), str(device), dtype)
        check_fits(controlnet, model.unet, str(location))
        set_tile_mode(controlnet, prompt.tile_mode)
        hint_pixels = hint_tensor(hint).to(device=device, dtype=dtype, memory_format=torch.channels_last)
        controls.append(Control(controlnet, hint_pixels, control.strength, control.start, control.end))
        hints["control" if index == 0 else f"control-{index + 1}"] = hint
    return ControlStack(controls), hints


def initial_noise(generator: torch.Generator, width: int, height: int) -> torch.Tensor:
    """Unit noise drawn on the CPU, so a seed gives the same image on every device."""
    shape = (1, LATENT_CHANNELS, height // LATENT_SCALE, width // LATENT_SCALE)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def weighted_text_embedding(model: LatentDiffusion, prompts: list[WeightedPrompt]) -> torch.Tensor:
    """The weighted mean of the prompts' embeddings ([1, tokens, dim], float32); no prompts -> the empty prompt's."""
    return weighted_text_conditioning(model, prompts)[0]


def weighted_text_conditioning(
    model: LatentDiffusion, prompts: list[WeightedPrompt]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weighted means of the prompts' embeddings ([1, tokens, dim]) and, for SDXL, pooled embeddings ([1, P]),
    float32; no prompts -> the empty prompt's."""
    if not prompts:
        prompts = [WeightedPrompt("")]
    embeddings, pooled = model.encode_text_pooled([p.text for p in prompts])
    weights = torch.tensor([p.weight for p in prompts], dtype=torch.float32, device=embeddings.device)

    def weighted_mean(rows: torch.Tensor) -> torch.Tensor:
        return (rows.float() * weights.view(-1, *[1] * (rows.ndim - 1))).sum(dim=0, keepdim=True) / weights.sum()

    return weighted_mean(embeddings), None if pooled is None else weighted_mean(pooled)


# Aesthetic scores the SDXL refiner is conditioned on: diffusers' StableDiffusionXLImg2ImgPipeline defaults.
REFINER_AESTHETIC_SCORE, REFINER_NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


def sdxl_conditioning(
    model: LatentDiffusion,
    prompt: ImaginePrompt,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cond_pooled: torch.Tensor,
    uncond_pooled: torch.Tensor,
) -> tuple[Conditioning, Conditioning]:
    """SDXL's (cond, uncond): the contexts with the added embedding `y` [1, adm_in_channels] of each side = the
    pooled text, then the micro-conditioning numbers embedded: original and target size = the generated size
    (height, width), crop corner (0, 0), the refiner's aesthetic score 6 (2.5 for the negative side).

    Without a negative prompt, the base model's unconditional context and pooled text are zeros
    (`force_zeros_for_empty_prompt` of diffusers' SDXL base pipeline; Stability's sampling zeroes them too).
    """
    if model.text_encoder.has_clip_l and all(not p.text for p in prompt.negative_prompts):
        uncond, uncond_pooled = torch.zeros_like(uncond), torch.zeros_like(uncond_pooled)
    size = (prompt.height, prompt.width)
    numbers = {"original_size_as_tuple": size, "crop_coords_top_left": (0, 0), "target_size_as_tuple": size}
    y_cond = model.added_embedding(cond_pooled, {**numbers, "aesthetic_score": (REFINER_AESTHETIC_SCORE,)})
    y_uncond = model.added_embedding(uncond_pooled, {**numbers, "aesthetic_score": (REFINER_NEGATIVE_AESTHETIC_SCORE,)})
    return Conditioning(cond, {"y": y_cond}), Conditioning(uncond, {"y": y_uncond})


# SDXL was trained on images of about 1024x1024 pixels in many aspect ratios (SDXL-Turbo on 512x512); far from the
# model's default area, images degrade. Outside these factors of the default area a warning says so.
SDXL_AREA_RANGE = (0.5, 2.0)


def check_sdxl_inputs(model: LatentDiffusion, prompt: ImaginePrompt, init_image) -> None:
    """The refiner has no CLIP ViT-L encoder and was trained only on the last, low-noise steps: it refines an
    image and cannot start from noise. Sizes far from the trained area give a warning."""
    if not model.text_encoder.has_clip_l and init_image is None:
        raise InvalidInputError(
            "this SDXL model has no CLIP-L text encoder: it is a refiner, which refines an image; give it an init "
            "image (img2img), or generate with a base model such as sdxl"
        )
    if prompt.clip_skip != 1:
        raise InvalidInputError("clip_skip is for SD 1.x models; SDXL always uses the penultimate layers (leave it 1)")
    texts = [wp.text for wp in (*prompt.prompts, *prompt.negative_prompts)]
    if prompt.embeddings and find_embeddings(texts, prompt.embeddings):
        raise InvalidInputError("textual-inversion embeddings are not supported on SDXL models yet: take the "
                                "embedding's name out of the prompt")
    area, trained = prompt.width * prompt.height, model.settings.default_size**2
    if not SDXL_AREA_RANGE[0] <= area / trained <= SDXL_AREA_RANGE[1]:
        logger.warning(
            "%dx%d is far from the %dx%d pixels this SDXL model was trained at: expect a degraded image",
            prompt.width, prompt.height, model.settings.default_size, model.settings.default_size,
        )


def sampling_schedule(prompt: ImaginePrompt, model: LatentDiffusion) -> str:
    """The prompt's sigma schedule; on the default, a model's own (the Turbo models' "trailing")."""
    if prompt.schedule == DEFAULT_SCHEDULE and model.settings.timestep_spacing != "linspace":
        return model.settings.timestep_spacing
    return prompt.schedule


def decode(prompt: ImaginePrompt, model: LatentDiffusion, latent: torch.Tensor, device: torch.device) -> Image.Image:
    """Step 4: the final latent as an image (in tiles when large)."""
    vae_latent = latent.to(dtype=model_dtype(model), memory_format=torch.channels_last)
    with precision_context(prompt.precision, device), submodel_on(model.first_stage_model, device, prompt.memory_mode):
        pixels = model.decode_latent(vae_latent, tiled=needs_tiles(latent))
    check_finite(model, prompt, latent=latent, pixels=pixels)
    return tensor_to_pil(pixels.float())


def check_finite(model: LatentDiffusion, prompt: ImaginePrompt, **tensors: torch.Tensor) -> None:
    """NonFiniteOutputError naming the likely cause when a tensor holds NaN or inf (it would be saved as a black
    image): NaN/inf in the weights themselves (a broken file), else a half-precision overflow."""
    broken = next((name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()), None)
    if broken is None:
        return
    bad_weight = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad_weight is not None:
        cause = f"the weights hold NaN/inf values (first in {bad_weight}): the model file {prompt.model} is broken"
    elif prompt.precision in ("fp16", "autocast"):
        cause = f"{prompt.precision} overflowed: try --precision bf16 or --precision full"
    else:
        cause = f"{prompt.precision} arithmetic overflowed: try --precision full, or check the model file"
    raise NonFiniteOutputError(f"the {broken} came out as NaN/inf, so no image was saved: {cause}")


def postprocess(
    image: Image.Image, prompt: ImaginePrompt, device: torch.device, settings: Settings
) -> tuple[dict, dict]:
    """Step 5: safety check, then face fixing and upscaling when asked for. Returns (images by kind, metadata notes).

    The safety check comes first so that, in `filter` mode, a flagged image is blurred before anything else sees it.
    """
    from imaginairy.enhancers.safety import apply_safety_mode, resolve_safety_mode

    safety_mode = resolve_safety_mode(prompt.safety_mode, settings)
    (image,), (safety,) = apply_safety_mode([image], safety_mode, model_location=settings.safety_checker_model,
                                            device=device)
    images = {"generated": image}
    notes = {"safety": safety.to_metadata()}
    if prompt.fix_faces:
        from imaginairy.enhancers.face_fix import fix_faces

        image = images["face_fixed"] = fix_faces(image, fidelity=prompt.fix_faces_fidelity, device=device)
    if prompt.upscale:
        from imaginairy.enhancers.upscale import upscale_image

        image = images["upscaled"] = upscale_image(image, device=device)
    if prompt.caption:
        from imaginairy.enhancers.describe import generate_caption

        notes["caption"] = generate_caption(image, model_location=settings.blip_model, device=device)
        logger.info("    caption: %s", notes["caption"])
    return images, notes


def needs_tiles(latent: torch.Tensor) -> bool:
    """Whether the VAE works on this latent's image in tiles: above 1024 px a side, to bound its memory."""
    return max(latent.shape[-2:]) > UNTILED_MAX_LATENT_SIDE
