"""diffusers (a test-only dependency) as the numerical reference: its pipelines built from one of our checkpoint files
with diffusers' own converters, and schedulers configured to take the same steps as our samplers."""

from __future__ import annotations

from pathlib import Path

import yaml
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.loaders import single_file_utils as convert
from k_diffusion import external

from imaginairy.models.weights import load_state_dict
from imaginairy.samplers import NoiseSchedule

SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def diffusers_pipeline(pipeline_class, weights_path: Path, scheduler, **components):
    """`pipeline_class` (StableDiffusionPipeline, StableDiffusionInpaintPipeline) with the UNet and VAE of the
    checkpoint at `weights_path`, converted by diffusers; the text encoder is left out (tests pass prompt_embeds).
    `components` are further pipeline components (a ControlNet pipeline's `controlnet`)."""
    checkpoint = load_state_dict(weights_path)
    original_config = yaml.safe_load(weights_path.with_suffix(".yaml").read_text())
    unet_config = convert.create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(convert.convert_ldm_unet_checkpoint(checkpoint, unet_config))
    vae_config = convert.create_vae_diffusers_config_from_ldm(original_config, checkpoint)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert.convert_ldm_vae_checkpoint(checkpoint, vae_config))
    return pipeline_class(vae=vae.eval(), text_encoder=None, tokenizer=None, unet=unet.eval(), scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, requires_safety_checker=False, **components)


def scheduler_and_call(sampler_type: str, steps: int, prediction_type: str = "epsilon"):
    """The diffusers scheduler equivalent to our `sampler_type`, and the pipeline-call arguments that make it take
    our steps: DDIM as SD configures it ("leading" spacing, offset 1); for k_euler our sigmas passed explicitly,
    since diffusers interpolates them linearly in sigma and k-diffusion in log sigma ("linspace" spacing makes
    diffusers start from noise * sigma_max, as k-diffusion does)."""
    if sampler_type == "ddim":
        scheduler = DDIMScheduler(**SD_SCHEDULE, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                                  timestep_spacing="leading", prediction_type=prediction_type)
        return scheduler, {"num_inference_steps": steps}
    if sampler_type == "k_euler":
        alphas_cumprod = NoiseSchedule(0.00085, 0.012, 1000).alphas_cumprod().float()
        sigmas = external.DiscreteEpsDDPMDenoiser(None, alphas_cumprod, quantize=False).get_sigmas(steps)
        scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type=prediction_type, timestep_spacing="linspace")
        return scheduler, {"sigmas": sigmas.tolist()}
    raise ValueError(f"no diffusers equivalent set up for {sampler_type}")
