"""One prompt -> images, in the steps of ARCHITECTURE.md: conditioning, initial latent, sampling, decoding."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable

import torch
from PIL import Image

from imaginairy.modules.diffusion import LatentDiffusion
from imaginairy.modules.layers import set_tile_mode
from imaginairy.samplers import NoiseSchedule, sample
from imaginairy.schema import ImaginePrompt, ImagineResult, WeightedPrompt
from imaginairy.utils.images import pil_to_tensor, resize_and_crop, tensor_to_pil

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, torch.Tensor], "bool | None"]
LATENT_CHANNELS = 4
LATENT_SCALE = 8


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
) -> ImagineResult:
    prompt = resolve_size(prompt, model)
    init_image = None
    if prompt.init_image is not None and prompt.init_image_strength > 0:
        init_image = prompt.init_image.as_pil()
        init_image = resize_and_crop(init_image, prompt.width, prompt.height)
        if prompt.init_image_strength >= 1:
            logger.info("init image strength is 1: the init image is returned unchanged")
            return ImagineResult(images={"generated": init_image}, prompt=prompt)
    latent = generate_latent(prompt, model, init_image, progress_callback=progress_callback, cancel_event=cancel_event)
    with precision_context(prompt.precision, latent.device):
        pixels = model.decode_latent(latent.to(model_dtype(model)))
    images, notes = postprocess(tensor_to_pil(pixels.float()), prompt, latent.device)
    result = ImagineResult(images=images, prompt=prompt)
    result.metadata.update(notes)
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
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
) -> torch.Tensor:
    """Steps 1-3: the final latent (float32) for a prompt whose size is resolved."""
    device = next(model.parameters()).device
    settings = model.settings
    generator = torch.Generator("cpu").manual_seed(prompt.seed)
    noise = initial_noise(generator, prompt.width, prompt.height).to(device)
    set_tile_mode(model, prompt.tile_mode)
    with precision_context(prompt.precision, device):
        cond = weighted_text_embedding(model, prompt.prompts)
        uncond = weighted_text_embedding(model, prompt.negative_prompts)
        init_latent = None
        if init_image is not None:
            pixels = pil_to_tensor(init_image).to(device=device, dtype=model_dtype(model))
            init_latent = model.encode_image(pixels).float()
        schedule = NoiseSchedule(settings.linear_start, settings.linear_end, settings.num_timesteps)
        return sample(
            prompt.sampler_type,
            unet_function(model),
            schedule,
            noise=noise,
            steps=prompt.steps,
            cond=cond,
            uncond=uncond,
            guidance_scale=prompt.prompt_strength,
            prediction_type=settings.prediction_type,
            init_latent=init_latent,
            denoise_strength=1.0 - prompt.init_image_strength if init_latent is not None else 1.0,
            ddim_eta=prompt.ddim_eta,
            generator=generator,
            callback=progress_callback,
            cancel_event=cancel_event,
        )


def initial_noise(generator: torch.Generator, width: int, height: int) -> torch.Tensor:
    """Unit noise drawn on the CPU, so a seed gives the same image on every device."""
    shape = (1, LATENT_CHANNELS, height // LATENT_SCALE, width // LATENT_SCALE)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def weighted_text_embedding(model: LatentDiffusion, prompts: list[WeightedPrompt]) -> torch.Tensor:
    """The weighted mean of the prompts' embeddings ([1, tokens, dim], float32); no prompts -> the empty prompt's."""
    if not prompts:
        prompts = [WeightedPrompt("")]
    embeddings = model.encode_text([p.text for p in prompts]).float()
    weights = torch.tensor([p.weight for p in prompts], dtype=torch.float32, device=embeddings.device)
    return (embeddings * weights[:, None, None]).sum(dim=0, keepdim=True) / weights.sum()


def unet_function(model: LatentDiffusion):
    """The UNet as the samplers call it: float32 in and out, the model's own dtype inside."""
    dtype = model_dtype(model)

    def unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return model.unet(x.to(dtype), t, context.to(dtype)).float()

    return unet


def model_dtype(model: LatentDiffusion) -> torch.dtype:
    return next(model.unet.parameters()).dtype


def precision_context(precision: str, device: torch.device):
    """`autocast` runs matmuls and convolutions in half precision on a float32 model; other modes need nothing."""
    if precision != "autocast":
        return contextlib.nullcontext()
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=half)
