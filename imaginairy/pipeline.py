"""One prompt -> images, in the five steps of ARCHITECTURE.md: conditioning, initial latent, sampling, decoding,
post-processing. `generate` reads them top to bottom; each step is a function with plain inputs and outputs."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import torch
from PIL import Image

from imaginairy.errors import NonFiniteOutputError
from imaginairy.masking.inpaint import Edit, prepare_edit
from imaginairy.models.runtime import model_device, model_dtype, precision_context, submodel_on, unet_function
from imaginairy.modules.autoencoder import LATENT_CHANNELS, LATENT_SCALE
from imaginairy.modules.diffusion import LatentDiffusion
from imaginairy.modules.layers import set_tile_mode
from imaginairy.modules.tiling import UNTILED_MAX_LATENT_SIDE
from imaginairy.prompts.conditioning import encode_conditioning
from imaginairy.samplers import Conditioning, NoiseSchedule, sample
from imaginairy.schema import ImaginePrompt, ImagineResult
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
    latent = generate_latent(prompt, model, edit, progress_callback=progress_callback, cancel_event=cancel_event,
                             device=device)
    decoded = edit.composite(decode(prompt, model, latent, device))
    images, notes = postprocess(decoded, prompt, latent.device, settings)
    result = result_of(prompt, images, metadata)
    result.metadata.update(notes)
    result.images.update(edit.finish(result.img))
    return result


def result_of(prompt: ImaginePrompt, images: dict[str, Image.Image], metadata: dict | None) -> ImagineResult:
    if metadata is None:
        from imaginairy.utils.metadata import build_metadata

        metadata = build_metadata(prompt, *images["generated"].size)
    return ImagineResult(images=images, prompt=prompt, metadata=metadata)


@torch.inference_mode()
def generate_latent(
    prompt: ImaginePrompt,
    model: LatentDiffusion,
    edit: Edit | None = None,
    *,
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Steps 1-3: the final latent (float32) for a prompt whose size is resolved; `edit` is the prompt's
    (`prepare_edit`), prepared here when not given.

    A 4-channel model blends the edit's kept region back at every step; an inpainting (9-channel) model is
    conditioned on the edit's mask and masked image instead (on "regenerate everything" without masks).
    """
    device = torch.device(device) if device is not None else model_device(model)
    edit = edit if edit is not None else prepare_edit(prompt, model.settings.default_size, device)
    generator = torch.Generator("cpu").manual_seed(prompt.seed)
    noise = initial_noise(generator, prompt.width, prompt.height).to(device)
    set_tile_mode(model, prompt.tile_mode)
    with precision_context(prompt.precision, device):
        cond, uncond = text_conditioning(prompt, model, device)
        init_latent, unet_inputs = image_conditioning(prompt, model, edit, needs_tiles(noise), device)
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
                sigma_schedule=prompt.schedule,
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
    """Step 1: (cond, uncond) of the prompts and negative prompts: A1111 syntax, 75-token chunks, textual-inversion
    embeddings and clip skip (imaginairy.prompts)."""
    with submodel_on(model.cond_stage_model, device, prompt.memory_mode):
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


def initial_noise(generator: torch.Generator, width: int, height: int) -> torch.Tensor:
    """Unit noise drawn on the CPU, so a seed gives the same image on every device."""
    shape = (1, LATENT_CHANNELS, height // LATENT_SCALE, width // LATENT_SCALE)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


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
