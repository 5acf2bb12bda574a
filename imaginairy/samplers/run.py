"""`sample()`: one sampling run (see the `imaginairy.samplers` docstring for every argument). It wraps the model
once (guidance, UNet inputs, kept region, cancellation, progress) and hands it to a flat sampler function."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from imaginairy.errors import InvalidInputError
from imaginairy.samplers.base import (
    Conditioning,
    KeptRegion,
    ModelFunction,
    ProgressCallback,
    StepReporter,
    ddpm_estimator,
    guided_model_fn,
    k_denoiser,
    noised,
    steps_to_run,
)
from imaginairy.samplers.ddim import ddim_timesteps, sample_ddim
from imaginairy.samplers.kdiffusion import discrete_denoiser, reported_total, run_sigmas, sample_kdiffusion
from imaginairy.samplers.plms import sample_plms
from imaginairy.samplers.schedule import NoiseSchedule
from imaginairy.samplers.table import DEFAULT_SCHEDULE, PREDICTION_TYPES, SAMPLER_TYPES, SAMPLERS_BY_NAME, SCHEDULES


@torch.no_grad()
def sample(
    sampler_type: str,
    model_fn: ModelFunction,
    schedule: NoiseSchedule,
    *,
    noise: torch.Tensor,
    steps: int,
    cond: Conditioning | torch.Tensor,
    uncond: Conditioning | torch.Tensor,
    guidance_scale: float,
    prediction_type: str = "epsilon",
    sigma_schedule: str = DEFAULT_SCHEDULE,
    init_latent: torch.Tensor | None = None,
    denoise_strength: float = 1.0,
    mask: torch.Tensor | None = None,
    ddim_eta: float = 0.0,
    unet_inputs: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator,
    callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
) -> torch.Tensor:
    """The final latents of one sampling run; see the `imaginairy.samplers` docstring for every argument."""
    check_inputs(sampler_type, schedule, steps, prediction_type, sigma_schedule, init_latent, denoise_strength, mask,
                 generator)
    run_steps = steps_to_run(steps, denoise_strength)
    if run_steps == 0:
        return init_latent
    model = guided_model_fn(model_fn, cond, uncond, guidance_scale, unet_inputs)
    alphas_cumprod = schedule.alphas_cumprod().to(device=noise.device, dtype=torch.float32)
    kept = KeptRegion(init_latent, mask, noise) if mask is not None else None
    family = SAMPLERS_BY_NAME[sampler_type].family

    if family == "ddpm":
        timesteps = ddim_timesteps(schedule.num_timesteps, steps)[steps - run_steps :]
        x = noise if init_latent is None else noised(init_latent, noise, float(alphas_cumprod[timesteps[0]]))
        reporter = StepReporter(callback, cancel_event, run_steps, kept)
        estimate = ddpm_estimator(model, alphas_cumprod, prediction_type, kept, reporter)
        if sampler_type == "ddim":
            x = sample_ddim(estimate, x, alphas_cumprod, timesteps, eta=ddim_eta, generator=generator,
                            callback=reporter.step_done)
        else:
            x = sample_plms(estimate, x, alphas_cumprod, timesteps, callback=reporter.step_done)
    else:
        denoiser = discrete_denoiser(model, alphas_cumprod, prediction_type)
        sigmas = run_sigmas(denoiser, sigma_schedule, steps, run_steps)
        x = noise * sigmas[0] if init_latent is None else init_latent + noise * sigmas[0]
        reporter = StepReporter(callback, cancel_event, reported_total(sampler_type, run_steps))
        x = sample_kdiffusion(sampler_type, k_denoiser(denoiser, kept, reporter), x, sigmas,
                              sigma_min=float(denoiser.sigma_min), generator=generator, callback=reporter.step_done)
    return x if kept is None else kept.blend(x, init_latent)


def check_inputs(
    sampler_type, schedule, steps, prediction_type, sigma_schedule, init_latent, denoise_strength, mask, generator
):
    if sampler_type not in SAMPLER_TYPES:
        raise InvalidInputError(f"Unknown sampler type {sampler_type!r}: use one of {', '.join(SAMPLER_TYPES)}.")
    if prediction_type not in PREDICTION_TYPES:
        valid = ", ".join(PREDICTION_TYPES)
        raise InvalidInputError(f"Unknown prediction type {prediction_type!r}: use one of {valid}.")
    if sigma_schedule not in SCHEDULES:
        raise InvalidInputError(f"Unknown schedule {sigma_schedule!r}: use one of {', '.join(SCHEDULES)}.")
    if sigma_schedule != DEFAULT_SCHEDULE and SAMPLERS_BY_NAME[sampler_type].family != "k":
        raise InvalidInputError(
            f"The {sampler_type} sampler takes its own steps: schedule {sigma_schedule!r} applies to the k-samplers"
            f" only; use schedule {DEFAULT_SCHEDULE!r} or a k_* sampler."
        )
    if not 1 <= steps <= schedule.num_timesteps:
        raise InvalidInputError(f"steps is {steps}: use a whole number from 1 to {schedule.num_timesteps}.")
    if not 0 < denoise_strength <= 1:
        raise InvalidInputError(f"denoise strength is {denoise_strength}: use a number in (0, 1].")
    if init_latent is None and denoise_strength != 1:
        raise InvalidInputError("A denoise strength below 1 needs an init latent: pass init_latent or use strength 1.")
    if mask is not None and init_latent is None:
        raise InvalidInputError("A mask needs an init latent to keep: pass init_latent with the mask.")
    if generator.device.type != "cpu":
        raise InvalidInputError("The generator must be a CPU torch.Generator, so seeds give the same image everywhere.")
