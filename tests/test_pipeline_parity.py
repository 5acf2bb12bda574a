"""A whole txt2img run of ours against diffusers' StableDiffusionPipeline on the same tiny checkpoint.

diffusers builds its UNet and VAE from our checkpoint *file* with its own converters, so the key mapping, the
network maths, the scheduler and the pipeline loop are all independent of our code. The text embeddings are fed to
both as `prompt_embeds` (the text encoders are compared on their own in tests/modules/test_text_encoders.py), and the
initial noise as `latents`.

Tolerance: float32 on both sides, with sums in different orders (fused attention kernels, convolution algorithms)
and our float64 noise schedule vs diffusers' float32 one. k_euler's fractional timesteps also go through log/exp
round trips that differ in the last bits on each side. Over 5 steps at guidance 7.5 the final latents (values up to
~4) differ by at most ~3e-4 (k_euler) and ~1e-5 (ddim). We allow 1e-3 absolute + 1e-3 relative on latents and 1e-3
on [0, 1] pixels; a one-step schedule offset or a swapped guidance order moves the result by >1e-2.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers_reference import diffusers_pipeline, scheduler_and_call

from imaginairy import ImaginePrompt, pipeline
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model

LATENT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}


def our_run(weights_path, sampler_type, steps, width=None, height=None):
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), steps=steps, seed=42,
                           sampler_type=sampler_type, width=width, height=height, precision="full")
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    prompt = pipeline.resolve_size(prompt, model)
    with torch.inference_mode():
        cond, uncond = (side.context for side in pipeline.text_conditioning(prompt, model, "cpu"))
        latent = pipeline.generate_latent(prompt, model)
        image = (model.decode_latent(latent) / 2 + 0.5).clamp(0, 1)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)
    return prompt, model, cond, uncond, noise, latent, image


@pytest.mark.parametrize(
    ("model_name", "prediction_type", "size"),
    [("tiny-sd15", "epsilon", None), ("tiny-sd21-v", "v_prediction", None), ("tiny-sd15", "epsilon", (96, 72))],
    ids=["sd15", "sd21-v", "sd15-96x72"],  # 72 px = 9 latent rows: an odd side on the way down the UNet
)
@pytest.mark.parametrize("sampler_type", ["ddim", "k_euler"])
def test_txt2img_matches_diffusers(tiny_models, model_name, prediction_type, size, sampler_type):
    steps = 5
    weights_path = tiny_models[model_name]
    width, height = size or (None, None)
    prompt, model, cond, uncond, noise, latent, image = our_run(weights_path, sampler_type, steps, width, height)
    scheduler, call = scheduler_and_call(sampler_type, steps, prediction_type)
    reference = diffusers_pipeline(StableDiffusionPipeline, weights_path, scheduler)
    with torch.inference_mode():
        reference_latent = reference(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                                     guidance_scale=prompt.prompt_strength, height=prompt.height, width=prompt.width,
                                     output_type="latent", **call).images
        reference_image = (reference.vae.decode(reference_latent / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}, "
          f"max |pixel difference| {(image - reference_image).abs().max():.2e}")
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    torch.testing.assert_close(image, reference_image, atol=1e-3, rtol=0)
    assert (latent - noise).abs().max() > 0.1  # it did denoise
