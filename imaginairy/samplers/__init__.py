"""The sampler layer turns initial noise (or a noised init latent) into final latents with any model function.

    sample(sampler_type, model_fn, schedule, *, noise, steps, cond, uncond, guidance_scale,
           prediction_type="epsilon", sigma_schedule="uniform", init_latent=None, denoise_strength=1.0, mask=None,
           ddim_eta=0.0, unet_inputs=None, generator, callback=None, cancel_event=None) -> final latents

- `sampler_type`: one of `SAMPLER_TYPES` ("plms", "ddim", and the k-diffusion samplers "k_*"), the names of
  `imaginairy.samplers.table` (which also maps the AUTOMATIC1111 display names to them).
- `model_fn(x, t, context, **unet_inputs) -> raw output` (epsilon or v, per `prediction_type`) for a batch: `x`
  [N, C, h, w], `t` float timesteps [N] (fractional for the k-samplers), `context` the text embeddings
  [N, tokens, dim], `unet_inputs` any further UNet inputs by keyword (the 9-channel inpainting channels, SDXL's
  `y`, a ControlNet hint: a new kind of conditioning is a new keyword, not a new code path here).
  Classifier-free guidance calls it once with the batch `[uncond, cond]` (diffusers' order) and uses
  `uncond + guidance_scale * (cond - uncond)`; with `guidance_scale == 1` it is called with `cond` only.
  `cond` and `uncond` (context tensors or `Conditioning`s, which add per-side inputs such as `y`) have the batch
  size of `noise`; `unet_inputs` (shared by both sides) go to every call unchanged.
- `schedule`: the `NoiseSchedule` the model was trained with; `sigma_schedule` how the k-samplers space their
  sigmas on it (`SCHEDULES`: "uniform", the model's own, "karras", "exponential", "simple"). DDIM, PLMS and the
  DPM fast/adaptive samplers take only "uniform".
- `noise`: unit Gaussian noise [B, 4, h, w] drawn by the caller from the seed, on the device to run on.
- `steps`: the number of steps of the full (txt2img) schedule.
- img2img: with `init_latent`, only the last `min(int(steps * denoise_strength), steps)` steps run (diffusers'
  convention), starting from the init latent noised to the first of them with `noise` (also at strength 1.0, which
  starts from the top noise level like txt2img). If no step would run, `init_latent` is returned unchanged.
  Without `init_latent` the run is txt2img from `noise` and `denoise_strength` must be 1.
- `mask` (needs `init_latent`; broadcastable to it, at latent resolution): 1 regenerates, 0 keeps the init
  latent, fractions blend. The kept region is the init latent noised to the current level with the same `noise`
  at every step: every model input's kept part is the init latent noised to the current level (the k-samplers'
  clean estimates' kept part the init latent), in the one wrapper of `samplers.base` that the samplers never see;
  the result equals `init_latent` exactly where the mask is 0.
- `ddim_eta`: DDIM's stochasticity (0 = deterministic). All random numbers of every sampler come from the CPU
  `generator`, so a seed gives bit-identical latents on the same machine.
- `callback(step, total, denoised)`: after every step, `step` counting from 1 to `total`, with the current
  estimate of the clean latents (mask applied). `total` is the number of steps run, for `k_dpm_fast` its solver
  steps (`steps // 3 + 1`), and None for `k_dpm_adaptive`, which picks its own steps. Returning True stops the run
  with `GenerationCancelled`, as does `cancel_event` being set, which is checked before every model call.
"""

import importlib

__all__ = ["SAMPLER_TYPES", "SCHEDULES", "Conditioning", "NoiseSchedule", "sample"]

# Imported on first use: `imaginairy.samplers.table` is read at CLI start-up and must not pull in torch.
_LOCATIONS = {
    "sample": "imaginairy.samplers.run",
    "Conditioning": "imaginairy.samplers.base",
    "NoiseSchedule": "imaginairy.samplers.schedule",
    "SAMPLER_TYPES": "imaginairy.samplers.table",
    "SCHEDULES": "imaginairy.samplers.table",
    "PREDICTION_TYPES": "imaginairy.samplers.table",
}


def __getattr__(name):
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'imaginairy.samplers' has no attribute {name!r}")
    return getattr(importlib.import_module(_LOCATIONS[name]), name)
