"""Prompt features through the whole txt2img pipeline, against diffusers' StableDiffusionPipeline.

diffusers gets the tiny checkpoint's UNet, VAE and text encoder through its own converters and the embedding through
its own `load_textual_inversion`, and encodes the prompt itself: nothing of our conditioning code is on its side.
Tolerance as in tests/test_pipeline_parity.py (float32 on both sides, 5 steps).
"""

from __future__ import annotations

import pytest
import torch
from clip_reference import clip_tokenizer, reference_clip_text_model
from diffusers import StableDiffusionPipeline
from diffusers_reference import diffusers_pipeline, scheduler_and_call
from make_tiny_models import TINY_CLIP

from imaginairy import ImaginePrompt, pipeline
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model
from imaginairy.models.weights import load_state_dict

STEPS = 5
LATENT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_bytes=2**30)


def our_latent(weights_path, cache, text, negative="", **fields):
    prompt = ImaginePrompt(text, negative_prompt=negative, model=str(weights_path), steps=STEPS, seed=42,
                           sampler_type="k_euler", precision="full", **fields)
    model = load_model(prompt, "cpu", cache)
    prompt = pipeline.resolve_size(prompt, model)
    with torch.inference_mode():
        return prompt, pipeline.generate_latent(prompt, model)


def test_embedding_changes_the_image_as_in_diffusers(tiny_models, tiny_embeddings, cache, tmp_path):
    weights_path = tiny_models["tiny-sd15"]
    folder = tiny_embeddings["tinycat"].parent
    text, negative = "a photo of tinycat on a hill", "tinyneg, blurry"
    prompt, latent = our_latent(weights_path, cache, text, negative, embeddings=[folder])
    _, plain_latent = our_latent(weights_path, cache, text, negative)

    scheduler, call = scheduler_and_call("k_euler", STEPS)
    reference = diffusers_pipeline(StableDiffusionPipeline, weights_path, scheduler)
    text_encoder = reference_clip_text_model(load_state_dict(weights_path), **TINY_CLIP)
    reference.register_modules(text_encoder=text_encoder, tokenizer=clip_tokenizer(tmp_path))
    for name in ("tinycat", "tinyneg"):
        reference.load_textual_inversion(str(tiny_embeddings[name]), token=name)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)
    with torch.inference_mode():
        reference_latent = reference(prompt=text, negative_prompt=negative, latents=noise,
                                     guidance_scale=prompt.prompt_strength, height=prompt.height,
                                     width=prompt.width, output_type="latent", **call).images

    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    assert (latent - plain_latent).abs().max() > 1e-2  # the embeddings changed the image


def test_a_word_after_token_75_changes_the_image(tiny_models, cache):
    head = " ".join(["cat"] * 78)
    _, dog = our_latent(tiny_models["tiny-sd15"], cache, head + " dog")
    _, red = our_latent(tiny_models["tiny-sd15"], cache, head + " red")
    assert (dog - red).abs().max() > 1e-2


@pytest.mark.parametrize("fields", [{"clip_skip": 2}, {"prompt_syntax": "plain"}], ids=["clip_skip", "plain"])
def test_text_conditioning_fields_reach_the_image(tiny_models, cache, fields):
    text = "a (red:1.4) apple"
    _, default = our_latent(tiny_models["tiny-sd15"], cache, text)
    _, changed = our_latent(tiny_models["tiny-sd15"], cache, text, **fields)
    assert (default - changed).abs().max() > 1e-2
