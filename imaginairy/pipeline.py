"""One prompt -> images, in the steps of ARCHITECTURE.md: conditioning, initial latent, sampling, decoding."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable

import torch
from PIL import Image

from imaginairy.errors import InvalidInputError
from imaginairy.masking.inpaint import (
    LATENT_SCALE,
    Edit,
    composited_onto_frame,
    edit_result_images,
    inpainting_mask_and_image,
    is_edit,
    latent_mask,
    mask_tensor,
    prepare_edit,
)
from imaginairy.modules.diffusion import LatentDiffusion
from imaginairy.modules.layers import set_tile_mode
from imaginairy.modules.tiling import UNTILED_MAX_LATENT_SIDE
from imaginairy.samplers import NoiseSchedule, sample
from imaginairy.schema import ImaginePrompt, ImagineResult, WeightedPrompt
from imaginairy.utils.images import pil_to_tensor, resize_and_crop, tensor_to_pil

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, torch.Tensor], "bool | None"]
LATENT_CHANNELS = 4


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
) -> ImagineResult:
    """`device` is where the networks run; by default the model's. With memory mode "low" the model waits on the CPU
    and each submodel (text encoder, UNet, VAE) is moved to `device` only while it runs."""
    device = torch.device(device) if device is not None else model_device(model)
    edit = prepare_edit(prompt, model.settings.default_size, device) if is_edit(prompt) else None
    if edit is None:
        prompt = resolve_size(prompt, model)
    else:
        prompt = dataclasses.replace(prompt, width=edit.width, height=edit.height)
    init_image = None
    if edit is not None:
        init_image = edit.init_image
    elif prompt.init_image is not None and prompt.init_image_strength > 0:
        init_image = resize_and_crop(prompt.init_image.as_pil(), prompt.width, prompt.height)
    if init_image is not None and prompt.init_image_strength >= 1:
        logger.info("init image strength is 1: the init image is returned unchanged")
        return ImagineResult(images={"generated": init_image if edit is None else edit.frame_image}, prompt=prompt)
    latent = generate_latent(
        prompt, model, init_image, edit=edit, progress_callback=progress_callback, cancel_event=cancel_event,
        device=device,
    )
    vae_latent = latent.to(dtype=model_dtype(model), memory_format=torch.channels_last)
    offload = prompt.memory_mode == "low"
    with precision_context(prompt.precision, device), submodel_on(model.first_stage_model, device, offload):
        pixels = model.decode_latent(vae_latent, tiled=needs_tiles(latent))
    generated = tensor_to_pil(pixels.float())
    if edit is not None:
        generated = composited_onto_frame(edit, generated)
    images, notes = postprocess(generated, prompt, latent.device)
    result = ImagineResult(images=images, prompt=prompt)
    result.metadata.update(notes)
    if edit is not None:
        result.images.update(edit_result_images(edit, result.img))
    return result


def postprocess(image: Image.Image, prompt: ImaginePrompt, device: torch.device) -> tuple[dict, dict]:
    """Step 5: safety check, then face fixing and upscaling when asked for. Returns (images by kind, metadata notes).

    The safety check comes first so that, in `filter` mode, a flagged image is blurred before anything else sees it.
    """
    from imaginairy.enhancers.safety import apply_safety_mode

    (image,), (safety,) = apply_safety_mode([image], prompt.safety_mode, device=device)
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

        notes["caption"] = generate_caption(image, device=device)
        logger.info("    caption: %s", notes["caption"])
    return images, notes


@torch.inference_mode()
def generate_latent(
    prompt: ImaginePrompt,
    model: LatentDiffusion,
    init_image=None,
    *,
    edit: Edit | None = None,
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Steps 1-3: the final latent (float32) for a prompt whose size is resolved.

    With an `edit` (whose `init_image` is `init_image`) a 4-channel model blends the kept region back at every
    step; an inpainting (9-channel) model is conditioned on the edit's mask and masked image instead, and on
    "regenerate everything" without an edit.
    """
    device = torch.device(device) if device is not None else model_device(model)
    if model.is_sdxl:
        check_sdxl_inputs(model, prompt, init_image)
    offload = prompt.memory_mode == "low"
    settings = model.settings
    generator = torch.Generator("cpu").manual_seed(prompt.seed)
    noise = initial_noise(generator, prompt.width, prompt.height).to(device)
    set_tile_mode(model, prompt.tile_mode)
    with precision_context(prompt.precision, device):
        with submodel_on(model.text_encoder, device, offload):
            cond, cond_pooled = weighted_text_conditioning(model, prompt.prompts)
            uncond, uncond_pooled = weighted_text_conditioning(model, prompt.negative_prompts)
        added = None
        if model.is_sdxl:
            uncond, added = sdxl_conditioning(model, prompt, uncond, cond_pooled, uncond_pooled)
        init_latent = conditioning = None
        with submodel_on(model.first_stage_model, device, offload):
            if init_image is not None:
                pixels = pil_to_tensor(init_image).to(device=device, dtype=model_dtype(model))
                init_latent = model.encode_image(pixels, tiled=needs_tiles(noise)).float()
            if settings.is_inpainting:
                conditioning = inpainting_conditioning(model, edit, prompt.width, prompt.height, device)
        model_fn, mask = unet_function(model, added), None
        if settings.is_inpainting:
            model_fn = inpainting_unet_function(model, *conditioning, added)
        elif edit is not None:
            mask = latent_mask(edit).to(device)
        schedule = NoiseSchedule(settings.linear_start, settings.linear_end, settings.num_timesteps)
        with submodel_on(model.model, device, offload):
            return sample(
                prompt.sampler_type,
                model_fn,
                schedule,
                noise=noise,
                steps=prompt.steps,
                cond=cond,
                uncond=uncond,
                guidance_scale=prompt.prompt_strength,
                prediction_type=settings.prediction_type,
                init_latent=init_latent,
                denoise_strength=1.0 - prompt.init_image_strength if init_latent is not None else 1.0,
                mask=mask,
                ddim_eta=prompt.ddim_eta,
                generator=generator,
                callback=progress_callback,
                cancel_event=cancel_event,
                timestep_spacing=settings.timestep_spacing,
            )


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
    uncond: torch.Tensor,
    cond_pooled: torch.Tensor,
    uncond_pooled: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """SDXL's extra UNet input: (the unconditional context, (y_uncond, y_cond)), each y [1, adm_in_channels] = the
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
    return uncond, (y_uncond, y_cond)


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
    area, trained = prompt.width * prompt.height, model.settings.default_size**2
    if not SDXL_AREA_RANGE[0] <= area / trained <= SDXL_AREA_RANGE[1]:
        logger.warning(
            "%dx%d is far from the %dx%d pixels this SDXL model was trained at: expect a degraded image",
            prompt.width, prompt.height, model.settings.default_size, model.settings.default_size,
        )


def added_embedding_rows(added: tuple[torch.Tensor, torch.Tensor], contexts: int, latents: int) -> torch.Tensor:
    """The SDXL `y` rows for a UNet call: the samplers pass `[uncond; cond]` contexts (2 per latent) under
    classifier-free guidance, `cond` alone (1 per latent) without it."""
    y_uncond, y_cond = added
    if contexts == latents:
        return y_cond.expand(latents, -1)
    if contexts != 2 * latents:
        raise ValueError(f"{contexts} contexts for {latents} latents: expected [cond] or [uncond; cond]")
    return torch.cat([y_uncond.expand(latents, -1), y_cond.expand(latents, -1)])


def unet_function(model: LatentDiffusion, added: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The UNet as the samplers call it: float32 in and out, the model's own dtype inside; `added` is SDXL's
    (y_uncond, y_cond) (see `sdxl_conditioning`).

    The latents go in channels-last (NHWC): every convolution then keeps that layout, which oneDNN and cuDNN run
    faster than NCHW, and the attention layers' [B, H*W, C] token views of it need no copy. The weights stay as
    loaded (a memory-mapped checkpoint is not copied).
    """
    dtype = model_dtype(model)

    def unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=dtype, memory_format=torch.channels_last)
        y = None if added is None else added_embedding_rows(added, context.shape[0], x.shape[0]).to(dtype)
        return model.unet(x, t, context.to(dtype), y=y).float()

    return unet


def inpainting_conditioning(
    model: LatentDiffusion, edit: Edit | None, width: int, height: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a 9-channel UNet takes besides the latent: the mask at latent resolution [1, 1, h, w] and the latent of
    the image with its regenerated pixels blanked [1, 4, h, w]. Without an edit everything is regenerated."""
    if edit is None:
        regenerate, pixels = torch.ones(1, 1, height, width), torch.zeros(1, 3, height, width)
    else:
        regenerate, pixels = mask_tensor(edit.frame_regenerate), pil_to_tensor(edit.init_image)
    mask, masked_image = inpainting_mask_and_image(regenerate, pixels)
    dtype = model_dtype(model)
    return mask.to(device), model.encode_image(masked_image.to(device=device, dtype=dtype)).float()


def inpainting_unet_function(
    model: LatentDiffusion, mask: torch.Tensor, masked_image_latent: torch.Tensor, added=None
):
    """The 9-channel UNet as the samplers call it: [x, mask, masked image latent] concatenated on the channels,
    the conditioning repeated to the batch (two under classifier-free guidance)."""
    unet = unet_function(model, added)
    conditioning = torch.cat([mask, masked_image_latent], dim=1)

    def inpainting_unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return unet(torch.cat([x, conditioning.expand(x.shape[0], -1, -1, -1)], dim=1), t, context)

    return inpainting_unet


def needs_tiles(latent: torch.Tensor) -> bool:
    """Whether the VAE works on this latent's image in tiles: above 1024 px a side, to bound its memory."""
    return max(latent.shape[-2:]) > UNTILED_MAX_LATENT_SIDE


@contextlib.contextmanager
def submodel_on(submodel: torch.nn.Module, device: torch.device, offload: bool):
    """Runs the block with `submodel` on `device`; with `offload` (memory mode "low") it is moved there for the
    block only and back to the CPU afterwards, so only the running submodel takes device memory."""
    if not offload or device.type == "cpu":
        yield
        return
    submodel.to(device)
    try:
        yield
    finally:
        submodel.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def model_device(model: LatentDiffusion) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: LatentDiffusion) -> torch.dtype:
    return next(model.unet.parameters()).dtype


def precision_context(precision: str, device: torch.device):
    """`autocast` runs matmuls and convolutions in half precision on a float32 model; other modes need nothing."""
    if precision != "autocast":
        return contextlib.nullcontext()
    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=half)
