"""Few-step (Turbo) sampling against diffusers' Turbo recipe: EulerAncestralDiscreteScheduler with
timestep_spacing="trailing" and guidance 0 (no unconditional pass), on the tiny SD-Turbo (SD 2.1 architecture) and
tiny SDXL checkpoints, at 1 and 4 steps.

Both sides draw the ancestral noise from a CPU generator seeded alike and advanced past the initial noise, so the
4-step runs are comparable number for number. Tolerance: 1e-3 absolute + relative on latents (float32, sums in
other orders; the printed differences are ~1e-5); a "linspace" schedule (4 steps at 999, 666, 333, 0) or an extra
unconditional pass moves them by >1e-1.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers_reference import SD_SCHEDULE, diffusers_pipeline, sdxl_pipeline

from imaginairy import ImaginePrompt, pipeline
from imaginairy.errors import InvalidInputError
from imaginairy.models.loading import load_diffusion_model
from imaginairy.models.registry import ModelSpec, resolve_model

LATENT_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
TRAILING = (("timestep_spacing", "trailing"),)


def turbo_model(weights_path, settings=TRAILING):
    return load_diffusion_model(ModelSpec(weights_path.stem, str(weights_path), weights_path.with_suffix(".yaml"),
                                          settings=settings))


def turbo_prompt(weights_path, steps, model):
    prompt = ImaginePrompt("a fox", model=str(weights_path), steps=steps, seed=7, sampler_type="k_euler_a",
                           prompt_strength=0.0, precision="full")
    return pipeline.resolve_size(prompt, model)


def counted_unet_calls(model) -> list[int]:
    """A list that gets the context batch of every UNet call."""
    calls = []
    model.unet.register_forward_hook(lambda module, args, output: calls.append(args[2].shape[0]))
    return calls


def diffusers_generator(prompt) -> torch.Generator:
    """Our seed's generator after the initial noise is drawn from it: where the ancestral noise draws start."""
    generator = torch.Generator().manual_seed(prompt.seed)
    pipeline.initial_noise(generator, prompt.width, prompt.height)
    return generator


def turbo_scheduler() -> EulerAncestralDiscreteScheduler:
    return EulerAncestralDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="trailing")


@pytest.mark.parametrize("steps", [1, 4])
def test_sd_turbo_matches_diffusers_turbo_recipe_with_one_unet_call_per_step(tiny_models, steps):
    weights_path = tiny_models["tiny-sd-turbo"]
    model = turbo_model(weights_path)
    prompt = turbo_prompt(weights_path, steps, model)
    calls = counted_unet_calls(model)
    with torch.inference_mode():
        cond = pipeline.weighted_text_embedding(model, prompt.prompts)
        latent = pipeline.generate_latent(prompt, model)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)

    scheduler = turbo_scheduler()
    reference = diffusers_pipeline(StableDiffusionPipeline, weights_path, scheduler)
    with torch.inference_mode():
        reference_latent = reference(prompt_embeds=cond, latents=noise.clone(), guidance_scale=0.0,
                                     num_inference_steps=steps, height=prompt.height, width=prompt.width,
                                     generator=diffusers_generator(prompt), output_type="latent").images
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    assert calls == [1] * steps  # one UNet call per step, on the conditional context alone
    assert scheduler.timesteps.tolist() == ([999] if steps == 1 else [999, 749, 499, 249])
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)


def test_linspace_spacing_is_not_the_turbo_schedule(tiny_models):
    """The same 4-step run with the default spacing lands elsewhere: the trailing spacing is what matches."""
    weights_path = tiny_models["tiny-sd-turbo"]
    trailing_model, linspace_model = turbo_model(weights_path), turbo_model(weights_path, settings=())
    prompt = turbo_prompt(weights_path, 4, trailing_model)
    with torch.inference_mode():
        trailing = pipeline.generate_latent(prompt, trailing_model)
        linspace = pipeline.generate_latent(prompt, linspace_model)
    assert (trailing - linspace).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [1, 4])
def test_sdxl_turbo_matches_diffusers_turbo_recipe(tiny_models, tmp_path, steps):
    weights_path = tiny_models["tiny-sdxl"]
    model = turbo_model(weights_path)
    prompt = turbo_prompt(weights_path, steps, model)
    calls = counted_unet_calls(model)
    with torch.inference_mode():
        latent = pipeline.generate_latent(prompt, model)
    noise = pipeline.initial_noise(torch.Generator().manual_seed(prompt.seed), prompt.width, prompt.height)

    reference = sdxl_pipeline(StableDiffusionXLPipeline, weights_path, turbo_scheduler(), tmp_path / "config")
    with torch.inference_mode():
        reference_latent = reference(prompt=prompt.prompts[0].text, latents=noise.clone(), guidance_scale=0.0,
                                     num_inference_steps=steps, height=prompt.height, width=prompt.width,
                                     generator=diffusers_generator(prompt), output_type="latent").images
    print(f"max |latent difference| {(latent - reference_latent).abs().max():.2e}")
    assert calls == [1] * steps
    torch.testing.assert_close(latent, reference_latent, **LATENT_TOLERANCE)


def test_registry_turbo_settings_override_the_architecture_config(tiny_models):
    assert dict(resolve_model("sdxl-turbo").settings) == {"default_size": 512, "timestep_spacing": "trailing"}
    assert dict(resolve_model("sd-turbo").settings) == {"timestep_spacing": "trailing"}
    assert resolve_model("sdxl").settings == ()
    spec = dataclasses.replace(resolve_model("sdxl-turbo"), weights=str(tiny_models["tiny-sdxl"]),
                               config_path=tiny_models["tiny-sdxl"].with_suffix(".yaml"))
    settings = load_diffusion_model(spec).settings
    assert (settings.default_size, settings.timestep_spacing) == (512, "trailing")


def test_ddim_refuses_the_turbo_spacing(tiny_models):
    weights_path = tiny_models["tiny-sd-turbo"]
    model = turbo_model(weights_path)
    prompt = dataclasses.replace(turbo_prompt(weights_path, 1, model), sampler_type="ddim")
    with pytest.raises(InvalidInputError, match="'trailing' applies to the k-samplers only"):
        pipeline.generate_latent(prompt, model)


def test_server_engines_serve_sdxl_and_the_turbo_models_with_their_few_step_settings():
    from imaginairy.server.engines import load_engines

    engines = load_engines()
    assert engines["stable-diffusion-xl-1024-v1-0"].model == "sdxl"
    for engine_id in ("sdxl-turbo", "sd-turbo"):
        assert engines[engine_id].model == engine_id
        assert engines[engine_id].defaults == {"steps": 1, "prompt_strength": 0.0, "sampler_type": "k_euler_a"}
