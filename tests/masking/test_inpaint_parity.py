"""The 9-channel inpainting model against diffusers' StableDiffusionInpaintPipeline on the same tiny checkpoint.

diffusers builds its UNet and VAE from our checkpoint file with its own converters (as tests/test_pipeline_parity.py
does), preprocesses the image and mask itself (binarised mask, nearest-neighbour to latent size) and concatenates
[latent, mask, masked-image latent] itself, doubling them for classifier-free guidance. We give it:
- the text embeddings as `prompt_embeds` (the text encoders are compared elsewhere);
- the masked-image latent, encoded by *its* VAE as the posterior mean (its own path would sample the posterior);
- the starting latents: at strength 1 it starts from `latents * init_noise_sigma`, and we start from the init
  latent noised to the first timestep with the run's noise, so we pass that, built with its VAE and its
  scheduler's `add_noise`.
The mask is aligned to the 8-pixel latent cells, where its nearest-neighbour downscaling and our "any pixel of the
cell" rule agree.

Tolerance: as for txt2img (float32 both sides, sums in different orders, float64 vs float32 schedules): 1e-3
absolute + 1e-3 relative on the final latents of 5 steps; observed max differences are ~7e-5 (ddim) and ~3e-4
(k_euler), on latents of magnitude up to ~4.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers_reference import diffusers_pipeline, inpainting_start, scheduler_and_call
from PIL import Image

from imaginairy import ImaginePrompt, pipeline
from imaginairy.masking.inpaint import prepare_edit
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model

LATENT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
SIZE = 64
STEPS = 5


def parity_image_and_mask():
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 8, 48, 40))  # on latent cell boundaries
    return image, mask


@pytest.mark.parametrize("sampler_type", ["ddim", "k_euler"])
def test_inpainting_model_matches_diffusers(tiny_models, sampler_type):
    weights_path = tiny_models["tiny-sd15-inpainting"]
    image, mask = parity_image_and_mask()
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), init_image=image,
                           mask_image=mask, init_image_strength=0.0, steps=STEPS, seed=42, sampler_type=sampler_type,
                           safety_mode="off", precision="full")
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    assert model.settings.is_inpainting
    edit = prepare_edit(prompt, model.settings.default_size)
    prompt = dataclasses.replace(prompt, width=edit.width, height=edit.height)
    with torch.inference_mode():
        cond, uncond = (side.context for side in pipeline.text_conditioning(prompt, model, "cpu"))
        latent = pipeline.generate_latent(prompt, model, edit)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), SIZE, SIZE)

    scheduler, call = scheduler_and_call(sampler_type, STEPS)
    reference = diffusers_pipeline(StableDiffusionInpaintPipeline, weights_path, scheduler)
    assert reference.unet.config.in_channels == 9
    masked_image_latents, start, start_scheduler = inpainting_start(reference, image, mask, noise, sampler_type, STEPS)
    with torch.inference_mode():
        reference_latent = reference(
            prompt_embeds=cond, negative_prompt_embeds=uncond, image=image, mask_image=mask,
            masked_image_latents=masked_image_latents, latents=start / start_scheduler.init_noise_sigma,
            strength=1.0, guidance_scale=prompt.prompt_strength, height=SIZE, width=SIZE, output_type="latent",
            **call,
        ).images
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    assert (latent - start).abs().max() > 0.1  # it did denoise
