"""Whole SDXL txt2img runs of ours against diffusers' StableDiffusionXLPipeline on the same tiny checkpoint file.

diffusers loads the file with its own single-file loader (`from_single_file`, component configs written from the
yaml into a local folder, so it runs offline) and encodes the prompts itself with its own tokenizers and
transformers' CLIP models; so the key mapping of all three networks, the text encoders, the pooled and size
embeddings, the scheduler and the loop are independent of our code. Only the initial noise is shared (`latents`).

Tolerance as in test_pipeline_parity.py: float32 on both sides, sums in different orders; over 5 steps the final
latents differ by ~1e-5 (see the printed figures). We allow 1e-3 absolute + 1e-3 relative on latents and 1e-3 on
[0, 1] pixels; a wrong size number, a swapped y row or a missing zeroed negative prompt moves them by >1e-2.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers_reference import inpainting_start, scheduler_and_call, sdxl_pipeline

from imaginairy import ImaginePrompt, pipeline
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model

LATENT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}


def our_run(weights_path, sampler_type, steps, negative_prompt, width=None, height=None, guidance=7.5):
    prompt = ImaginePrompt("a red apple", negative_prompt=negative_prompt, model=str(weights_path), steps=steps,
                           seed=42, sampler_type=sampler_type, width=width, height=height, precision="full",
                           prompt_strength=guidance)
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    prompt = pipeline.resolve_size(prompt, model)
    with torch.inference_mode():
        latent = pipeline.generate_latent(prompt, model)
        image = (model.decode_latent(latent) / 2 + 0.5).clamp(0, 1)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)
    return prompt, model, noise, latent, image


def reference_run(pipe, prompt, noise, call, negative_prompt):
    with torch.inference_mode():
        reference_latent = pipe(prompt=prompt.prompts[0].text, negative_prompt=negative_prompt, latents=noise.clone(),
                                guidance_scale=prompt.prompt_strength, height=prompt.height, width=prompt.width,
                                output_type="latent", **call).images
        scale = pipe.vae.config.scaling_factor
        reference_image = (pipe.vae.decode(reference_latent / scale).sample / 2 + 0.5).clamp(0, 1)
    return reference_latent, reference_image


@pytest.fixture(scope="module")
def sdxl_reference(tiny_models, tmp_path_factory):
    """diffusers' pipeline for tiny-sdxl, loaded once; each test sets its scheduler."""
    scheduler, _ = scheduler_and_call("ddim", 1)
    return sdxl_pipeline(StableDiffusionXLPipeline, tiny_models["tiny-sdxl"], scheduler,
                         tmp_path_factory.mktemp("sdxl-config"))


@pytest.mark.parametrize(
    ("sampler_type", "negative_prompt", "size"),
    [("ddim", "blurry", None), ("ddim", None, None), ("k_euler", "blurry", None), ("k_euler", None, (96, 72))],
    ids=["ddim", "ddim-empty-negative-zeroed", "k_euler", "k_euler-96x72"],  # 72 px: an odd latent side
)
def test_sdxl_txt2img_matches_diffusers(tiny_models, sdxl_reference, sampler_type, negative_prompt, size):
    steps = 5
    width, height = size or (None, None)
    prompt, model, noise, latent, image = our_run(tiny_models["tiny-sdxl"], sampler_type, steps, negative_prompt,
                                                  width, height)
    sdxl_reference.scheduler, call = scheduler_and_call(sampler_type, steps)
    reference_latent, reference_image = reference_run(sdxl_reference, prompt, noise, call, negative_prompt)
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}, "
          f"max |pixel difference| {(image - reference_image).abs().max():.2e}")
    assert model.is_sdxl and model.settings.scale_factor == pytest.approx(0.13025)
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    torch.testing.assert_close(image, reference_image, atol=1e-3, rtol=0)
    assert (latent - noise).abs().max() > 0.1  # it did denoise


def test_sdxl_architecture_is_detected_from_the_keys(tiny_models, tmp_path):
    """Without the yaml beside it, the file is recognised as SDXL base from its keys and loads strictly (with the
    real configs' sizes, so the tiny file does not fit: the error names the SDXL config)."""
    from imaginairy.errors import ModelLoadError
    from imaginairy.models.loading import infer_config_path
    from imaginairy.models.weights import load_state_dict

    for name, family in [("tiny-sdxl", "sdxl-base"), ("tiny-sdxl-refiner", "sdxl-refiner"),
                         ("tiny-sdxl-inpainting", "sdxl-inpainting"), ("tiny-sd-turbo", "sd-v2")]:
        assert infer_config_path(load_state_dict(tiny_models[name]), name).stem == family
    lone = tmp_path / "lone-sdxl.safetensors"
    lone.write_bytes(tiny_models["tiny-sdxl"].read_bytes())
    with pytest.raises(ModelLoadError, match="sdxl-base.yaml"):
        load_model(ImaginePrompt("x", model=str(lone)), "cpu", ModelCache(max_bytes=2**30))


def test_sdxl_refiner_img2img_matches_diffusers(tiny_models, tmp_path):
    """The refiner (OpenCLIP only, aesthetic score 6 / 2.5 in its added embedding) refining an image, against
    StableDiffusionXLImg2ImgPipeline given the same init latent and, through its generator, the same noise."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    weights_path = tiny_models["tiny-sdxl-refiner"]
    from imaginairy.utils.images import pil_to_tensor

    steps, strength, size = 5, 0.6, 64
    gradient = torch.linspace(0, 255, size).round().byte()
    init_image = Image.fromarray(torch.stack([gradient.expand(size, -1)] * 3, dim=-1).numpy())
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), steps=steps, seed=3,
                           sampler_type="ddim", precision="full", init_image=init_image,
                           init_image_strength=1 - strength, width=size, height=size)
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with torch.inference_mode():
        latent = pipeline.generate_latent(prompt, model)
        init_latent = model.encode_image(pil_to_tensor(init_image))
    scheduler, call = scheduler_and_call("ddim", steps)
    pipe = sdxl_pipeline(StableDiffusionXLImg2ImgPipeline, weights_path, scheduler, tmp_path / "refiner-config")
    with torch.inference_mode():
        reference_latent = pipe(prompt="a red apple", negative_prompt="blurry", image=init_latent, strength=strength,
                                guidance_scale=prompt.prompt_strength, generator=torch.Generator().manual_seed(3),
                                output_type="latent", **call).images
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    assert not model.text_encoder.has_clip_l and model.unet.adm_in_channels == 48 + 5 * 256
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    assert (latent - init_latent).abs().max() > 0.1


def test_sdxl_refiner_as_base_model_is_refused(tiny_models):
    from imaginairy.errors import InvalidInputError

    prompt = ImaginePrompt("a red apple", model=str(tiny_models["tiny-sdxl-refiner"]), steps=2)
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with pytest.raises(InvalidInputError, match="no CLIP-L text encoder.*init image"):
        pipeline.generate_latent(pipeline.resolve_size(prompt, model), model)


def test_sdxl_untrained_size_warns_and_still_generates(tiny_models, caplog):
    prompt = ImaginePrompt("a red apple", model=str(tiny_models["tiny-sdxl"]), steps=1, width=256, height=64,
                           sampler_type="k_euler")
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with caplog.at_level("WARNING", logger="imaginairy.pipeline"):
        latent = pipeline.generate_latent(prompt, model)
    assert latent.shape == (1, 4, 8, 32)
    assert "256x64 is far from the 64x64 pixels" in caplog.text


def test_sdxl_inpainting_model_matches_diffusers(tiny_models, tmp_path):
    """The 9-channel SDXL inpainting model against StableDiffusionXLInpaintPipeline, set up as the SD 1.5 case in
    tests/masking/test_inpaint_parity.py (see there): its VAE's posterior mean for the masked-image latent, the
    starting latent noised by its scheduler, the mask on latent cell boundaries."""
    import dataclasses

    import numpy as np
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image

    from imaginairy.masking.inpaint import prepare_edit

    weights_path, size, steps = tiny_models["tiny-sdxl-inpainting"], 64, 5
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (size, size, 3)).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 8, 48, 40))
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), init_image=image,
                           mask_image=mask, init_image_strength=0.0, steps=steps, seed=42, sampler_type="ddim",
                           safety_mode="off", precision="full")
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    edit = prepare_edit(prompt, model.settings.default_size)
    prompt = dataclasses.replace(prompt, width=edit.width, height=edit.height)
    with torch.inference_mode():
        latent = pipeline.generate_latent(prompt, model, edit)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), size, size)

    scheduler, call = scheduler_and_call("ddim", steps)
    reference = sdxl_pipeline(StableDiffusionXLInpaintPipeline, weights_path, scheduler, tmp_path / "inpaint-config")
    assert model.settings.is_inpainting and reference.unet.config.in_channels == 9
    masked_image_latents, start, start_scheduler = inpainting_start(reference, image, mask, noise, "ddim", steps)
    with torch.inference_mode():
        reference_latent = reference(
            prompt="a red apple", negative_prompt="blurry", image=image, mask_image=mask,
            masked_image_latents=masked_image_latents, latents=start / start_scheduler.init_noise_sigma,
            strength=1.0, guidance_scale=prompt.prompt_strength, height=size, width=size, output_type="latent",
            **call,
        ).images
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    assert (latent - start).abs().max() > 0.1


def test_sdxl_weighted_prompts_average_context_and_pooled_alike(tiny_models):
    from imaginairy.schema import WeightedPrompt

    prompt = ImaginePrompt(
        [WeightedPrompt("a cat", 1), WeightedPrompt("a dog", 3)], model=str(tiny_models["tiny-sdxl"]), precision="full"
    )
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with torch.inference_mode():
        context, pooled = pipeline.weighted_text_conditioning(model, prompt.prompts)
        contexts, pooleds = model.encode_text_pooled(["a cat", "a dog"])
    torch.testing.assert_close(context, (contexts[:1] + 3 * contexts[1:]) / 4)
    torch.testing.assert_close(pooled, (pooleds[:1] + 3 * pooleds[1:]) / 4)
    assert (pooleds[0] - pooleds[1]).abs().max() > 1e-2


def test_sdxl_refuses_clip_skip(tiny_models):
    from imaginairy.errors import InvalidInputError

    prompt = ImaginePrompt("a red apple", model=str(tiny_models["tiny-sdxl"]), steps=1, clip_skip=2)
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with pytest.raises(InvalidInputError, match="clip_skip is for SD 1.x models"):
        pipeline.generate_latent(pipeline.resolve_size(prompt, model), model)


def test_sdxl_refuses_a_triggered_embedding(tiny_models, tiny_embeddings):
    from imaginairy.errors import InvalidInputError

    prompt = ImaginePrompt("a tinycat", model=str(tiny_models["tiny-sdxl"]), steps=1,
                           embeddings=[tiny_embeddings["tinycat"]])
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with pytest.raises(InvalidInputError, match="embeddings are not supported on SDXL"):
        pipeline.generate_latent(pipeline.resolve_size(prompt, model), model)


def test_sdxl_checkpoint_without_text_encoders_is_one_clear_error(tiny_models, tmp_path):
    from imaginairy.errors import ModelLoadError
    from imaginairy.models.weights import load_state_dict, save_state_dict

    state_dict = {
        k: v for k, v in load_state_dict(tiny_models["tiny-sdxl"]).items() if not k.startswith("conditioner.")
    }
    path = tmp_path / "no-text-encoders.safetensors"
    save_state_dict(state_dict, path)
    prompt = ImaginePrompt(
        "a red apple", model=str(path), model_config=str(tiny_models["tiny-sdxl"].with_suffix(".yaml"))
    )
    with pytest.raises(ModelLoadError, match="has no text encoders weights.*complete SDXL checkpoint"):
        load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
