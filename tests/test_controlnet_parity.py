"""Whole runs with ControlNets against diffusers' StableDiffusionControlNetPipeline (one ControlNet) and its
MultiControlNetModel (two), on the tiny SD 1.5 model and tiny ControlNets, same noise and text embeddings.

diffusers reads its ControlNets from their diffusers folders (converted by diffusers from the original-layout files
we load), resizes the control image with its own image processor, and applies `controlnet_conditioning_scale` and
`control_guidance_start/end` with its own loop (`guess_mode=False`: both guidance halves get the hint). The control
images here are not at the generation size, so the resizing is compared too.

Tolerance as in test_pipeline_parity.py: float32 on both sides, sums in different orders; the final latents differ
by ~6e-5-9e-5 (ddim; img2img 2e-5) / ~3e-4 (k_euler). We allow 1e-3 absolute + 1e-3 relative. The controls
move the final latents by 5 to 40 from the run without them (checked below), so the residuals' scale and window
matter far above the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline
from diffusers_reference import diffusers_pipeline, scheduler_and_call
from make_tiny_models import diffusers_controlnet_folder
from PIL import Image

from imaginairy import ControlInput, ImaginePrompt, pipeline
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model

LATENT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
STEPS = 5


def control_image(seed: int, size=(50, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_both(tiny_models, tiny_controlnets, tmp_path, sampler_type, settings):
    """Our final latent and diffusers' for the control `settings`: [(controlnet name, strength, start, end)]."""
    weights_path = tiny_models["tiny-sd15"]
    images = [control_image(index) for index in range(len(settings))]
    controls = [ControlInput("tile", image=image, strength=strength, start=start, end=end,
                             model=str(tiny_controlnets[name]))
                for image, (name, strength, start, end) in zip(images, settings)]
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), steps=STEPS, seed=42,
                           sampler_type=sampler_type, width=64, height=72, precision="full", control_inputs=controls)
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with torch.inference_mode():
        cond = pipeline.weighted_text_embedding(model, prompt.prompts)
        uncond = pipeline.weighted_text_embedding(model, prompt.negative_prompts)
        latent = pipeline.generate_latent(prompt, model)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)

    folders = {"tiny-controlnet-sd15": tiny_controlnets["tiny-controlnet-sd15-diffusers"]}
    nets = []
    for name, *_ in settings:
        if name not in folders:
            folders[name] = diffusers_controlnet_folder(tiny_controlnets[name], tmp_path / name)
        nets.append(ControlNetModel.from_pretrained(folders[name]).eval())
    scheduler, call = scheduler_and_call(sampler_type, STEPS)
    single = len(nets) == 1
    reference = diffusers_pipeline(StableDiffusionControlNetPipeline, weights_path, scheduler,
                                   controlnet=nets[0] if single else MultiControlNetModel(nets))
    strengths, starts, ends = ([s[i] for s in settings] for i in (1, 2, 3))
    with torch.inference_mode():
        reference_latent = reference(
            prompt_embeds=cond, negative_prompt_embeds=uncond, image=images[0] if single else images,
            latents=noise.clone(), guidance_scale=prompt.prompt_strength, height=prompt.height, width=prompt.width,
            controlnet_conditioning_scale=strengths[0] if single else strengths,
            control_guidance_start=starts[0] if single else starts, control_guidance_end=ends[0] if single else ends,
            guess_mode=False, output_type="latent", **call,
        ).images
    return prompt, model, latent, reference_latent


CASES = {
    "one": [("tiny-controlnet-sd15", 0.8, 0.0, 1.0)],
    "one-window": [("tiny-controlnet-sd15", 1.0, 0.2, 0.8)],
    "two": [("tiny-controlnet-sd15", 0.7, 0.0, 0.6), ("tiny-controlnet-sd15-b", 1.3, 0.4, 1.0)],
}


@pytest.mark.parametrize(("sampler_type", "case"), [("ddim", "one"), ("ddim", "one-window"), ("ddim", "two"),
                                                     ("k_euler", "one-window")])
def test_controlnet_txt2img_matches_diffusers(tiny_models, tiny_controlnets, tmp_path, sampler_type, case):
    prompt, model, latent, reference_latent = run_both(tiny_models, tiny_controlnets, tmp_path, sampler_type,
                                                       CASES[case])
    uncontrolled = pipeline.generate_latent(ImaginePrompt(**{**prompt.__dict__, "control_inputs": []}), model)
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}, "
          f"control moved the latent by {(latent - uncontrolled).abs().max():.2e}")
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    assert (latent - uncontrolled).abs().max() > 1e-2  # the control did something, well above the tolerance


def test_controlnet_img2img_matches_diffusers(tiny_models, tiny_controlnets):
    """img2img: diffusers' StableDiffusionControlNetImg2ImgPipeline given our init latent (it would sample the VAE
    posterior where we take its mean) and a generator with our seed, from which both draw the same noise first."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from imaginairy.utils.images import pil_to_tensor

    weights_path = tiny_models["tiny-sd15"]
    hint_source, init = control_image(7), control_image(8, (64, 72))
    control = ControlInput("tile", image=hint_source, strength=0.9, start=0.0, end=0.7,
                           model=str(tiny_controlnets["tiny-controlnet-sd15"]))
    prompt = ImaginePrompt("a red apple", negative_prompt="blurry", model=str(weights_path), steps=8, seed=42,
                           sampler_type="ddim", width=64, height=72, precision="full", init_image=init,
                           init_image_strength=0.4, control_inputs=[control])
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with torch.inference_mode():
        cond = pipeline.weighted_text_embedding(model, prompt.prompts)
        uncond = pipeline.weighted_text_embedding(model, prompt.negative_prompts)
        latent = pipeline.generate_latent(prompt, model)
        edit = pipeline.prepare_edit(prompt, 64, "cpu")
        init_latent = model.encode_image(pil_to_tensor(edit.init_image)).float()
        scheduler, call = scheduler_and_call("ddim", prompt.steps)
        reference = diffusers_pipeline(
            StableDiffusionControlNetImg2ImgPipeline, weights_path, scheduler,
            controlnet=ControlNetModel.from_pretrained(tiny_controlnets["tiny-controlnet-sd15-diffusers"]).eval())
        reference_latent = reference(
            prompt_embeds=cond, negative_prompt_embeds=uncond, image=init_latent, control_image=hint_source,
            strength=1 - prompt.init_image_strength, generator=torch.Generator().manual_seed(prompt.seed),
            guidance_scale=prompt.prompt_strength, height=prompt.height, width=prompt.width,
            controlnet_conditioning_scale=0.9, control_guidance_start=0.0, control_guidance_end=0.7,
            output_type="latent", **call,
        ).images
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)
    assert (latent - init_latent).abs().max() > 0.1
