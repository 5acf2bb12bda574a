"""The sampler layer: turns initial noise (or a noised init latent) into final latents with any model function.

    sample(sampler_type, model_fn, schedule, *, noise, steps, cond, uncond, guidance_scale,
           prediction_type="epsilon", init_latent=None, denoise_strength=1.0, mask=None, ddim_eta=0.0,
           generator, callback=None, cancel_event=None) -> final latents

- `sampler_type`: one of `SAMPLER_TYPES` ("plms", "ddim", and the k-diffusion samplers "k_*").
- `model_fn(x, t, context) -> raw output` (epsilon or v, per `prediction_type`) for a batch: `x` [N, C, h, w],
  `t` float timesteps [N] (fractional for the k-samplers), `context` the text embeddings [N, tokens, dim].
  Classifier-free guidance calls it once with the batch `[uncond, cond]` (diffusers' order) and uses
  `uncond + guidance_scale * (cond - uncond)`; with `guidance_scale` 1, or 0 (guidance off, the few-step Turbo
  models' setting, as in diffusers), it is called with `cond` only.
  `cond` and `uncond` have the batch size of `noise`.
- `schedule`: the `NoiseSchedule` the model was trained with.
- `noise`: unit Gaussian noise [B, 4, h, w] drawn by the caller from the seed, on the device to run on.
- `steps`: the number of steps of the full (txt2img) schedule.
- img2img: with `init_latent`, only the last `min(int(steps * denoise_strength), steps)` steps run (diffusers'
  convention), starting from the init latent noised to the first of them with `noise` (also at strength 1.0, which
  starts from the top noise level like txt2img). If no step would run, `init_latent` is returned unchanged.
  Without `init_latent` the run is txt2img from `noise` and `denoise_strength` must be 1.
- `mask` (needs `init_latent`; broadcastable to it, at latent resolution): 1 regenerates, 0 keeps the init
  latent, fractions blend. The kept region is the init latent noised to the current level with the same `noise`
  at every step (DDIM/PLMS blend after every step; the k-samplers blend every model input and clean estimate),
  and the result equals `init_latent` exactly where the mask is 0.
- `ddim_eta`: DDIM's stochasticity (0 = deterministic). All random numbers of every sampler come from the CPU
  `generator`, so a seed gives bit-identical latents on the same machine.
- `timestep_spacing` (k-samplers): "linspace" (k-diffusion's) or "trailing" (diffusers', for Turbo models).
- `callback(step, total, denoised)`: after every step, `step` counting from 1 to `total`, with the current
  estimate of the clean latents (mask applied). `total` is the number of steps run, for `k_dpm_fast` its solver
  steps (`steps // 3 + 1`), and None for `k_dpm_adaptive`, which picks its own steps. Returning True stops the run
  with `GenerationCancelled`, as does `cancel_event` being set, which is checked before every model call.
"""

from __future__ import annotations

import threading

import torch

from imaginairy.errors import InvalidInputError
from imaginairy.samplers.base import (
    KeptRegion,
    ModelFunction,
    ProgressCallback,
    StepReporter,
    guided_model_fn,
    steps_to_run,
)
from imaginairy.samplers.ddim import ddim_timesteps, noised, sample_ddim
from imaginairy.samplers.kdiffusion import (
    K_SAMPLER_TYPES,
    TIMESTEP_SPACINGS,
    discrete_denoiser,
    reported_total,
    run_sigmas,
    sample_kdiffusion,
)
from imaginairy.samplers.plms import sample_plms
from imaginairy.samplers.schedule import NoiseSchedule

SAMPLER_TYPES = ("plms", "ddim", *K_SAMPLER_TYPES)
PREDICTION_TYPES = ("epsilon", "v_prediction")

__all__ = ["SAMPLER_TYPES", "NoiseSchedule", "sample"]


@torch.no_grad()
def sample(
    sampler_type: str,
    model_fn: ModelFunction,
    schedule: NoiseSchedule,
    *,
    noise: torch.Tensor,
    steps: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    prediction_type: str = "epsilon",
    init_latent: torch.Tensor | None = None,
    denoise_strength: float = 1.0,
    mask: torch.Tensor | None = None,
    ddim_eta: float = 0.0,
    generator: torch.Generator,
    callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    timestep_spacing: str = "linspace",
) -> torch.Tensor:
    """The final latents of one sampling run; see the module docstring for every argument."""
    check_inputs(sampler_type, schedule, steps, prediction_type, init_latent, denoise_strength, mask, generator)
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise InvalidInputError(f"timestep spacing {timestep_spacing!r}: use one of {', '.join(TIMESTEP_SPACINGS)}.")
    if timestep_spacing != "linspace" and sampler_type in ("ddim", "plms"):
        raise InvalidInputError(
            f"{sampler_type} does not take {timestep_spacing} timestep spacing (this model's): use a k-sampler such as "
            "k_euler_a."
        )
    run_steps = steps_to_run(steps, denoise_strength)
    if run_steps == 0:
        return init_latent
    model = guided_model_fn(model_fn, cond, uncond, guidance_scale)
    alphas_cumprod = schedule.alphas_cumprod().to(device=noise.device, dtype=torch.float32)
    kept = KeptRegion(init_latent, mask, noise) if mask is not None else None

    if sampler_type in ("ddim", "plms"):
        timesteps = ddim_timesteps(schedule.num_timesteps, steps)[steps - run_steps :]
        x = noise if init_latent is None else noised(init_latent, noise, float(alphas_cumprod[timesteps[0]]))
        reporter = StepReporter(callback, cancel_event, run_steps)
        options = {"prediction_type": prediction_type, "kept": kept, "reporter": reporter}
        if sampler_type == "ddim":
            return sample_ddim(
                model, x, alphas_cumprod, timesteps, eta=ddim_eta, generator=generator, **options
            )
        return sample_plms(model, x, alphas_cumprod, timesteps, **options)

    denoiser = discrete_denoiser(model, alphas_cumprod, prediction_type)
    sigmas = run_sigmas(denoiser, steps, run_steps, timestep_spacing)
    x = noise * sigmas[0] if init_latent is None else init_latent + noise * sigmas[0]
    reporter = StepReporter(callback, cancel_event, reported_total(sampler_type, run_steps))
    x = sample_kdiffusion(sampler_type, denoiser, x, sigmas, generator=generator, kept=kept, reporter=reporter)
    return x if kept is None else kept.blend(x, init_latent)


def check_inputs(sampler_type, schedule, steps, prediction_type, init_latent, denoise_strength, mask, generator):
    if sampler_type not in SAMPLER_TYPES:
        raise InvalidInputError(f"Unknown sampler type {sampler_type!r}: use one of {', '.join(SAMPLER_TYPES)}.")
    if prediction_type not in PREDICTION_TYPES:
        valid = ", ".join(PREDICTION_TYPES)
        raise InvalidInputError(f"Unknown prediction type {prediction_type!r}: use one of {valid}.")
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
