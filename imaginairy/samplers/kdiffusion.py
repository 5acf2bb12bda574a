"""The Karras et al. samplers of the k-diffusion package, run on the model's own discrete noise schedule.

k-diffusion works on x = x_t / sqrt(a_t) at noise level sigma = sqrt((1 - a_t) / a_t) and calls a denoiser
`(x, sigma) -> clean estimate`. Its `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser` turn the model's epsilon /
v output into that estimate, converting sigma to a fractional (unquantized) timestep.

The sigmas follow the prompt's schedule (`imaginairy.samplers.table.SCHEDULES`; by default the model's own,
`get_sigmas(steps)`: timesteps evenly spaced from the last to the first, then 0); `k_dpm_fast` and
`k_dpm_adaptive` run between the schedule's sigma_min and the start sigma. Every random number comes from the CPU
generator: ancestral samplers get a noise sampler drawing from it, and the SDE samplers a Brownian tree seeded from
it (the tree itself draws on the latents' device, so those samplers' images are reproducible per device).
"""

from __future__ import annotations

import warnings

import torch

with warnings.catch_warnings():
    # k-diffusion's package init imports `clip`, which imports the deprecated pkg_resources: not our users' concern
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from k_diffusion import external, sampling

from imaginairy.samplers.base import GuidedModel, KDenoiser, StepCallback, cpu_noise

SIGMA_SCHEDULE_SAMPLERS = {
    "k_lms": sampling.sample_lms,
    "k_euler": sampling.sample_euler,
    "k_euler_a": sampling.sample_euler_ancestral,
    "k_heun": sampling.sample_heun,
    "k_dpm_2": sampling.sample_dpm_2,
    "k_dpm_2_a": sampling.sample_dpm_2_ancestral,
    "k_dpmpp_2m": sampling.sample_dpmpp_2m,
    "k_dpmpp_2s_a": sampling.sample_dpmpp_2s_ancestral,
    "k_dpmpp_sde": sampling.sample_dpmpp_sde,
    "k_dpmpp_2m_sde": sampling.sample_dpmpp_2m_sde,
    "k_dpmpp_3m_sde": sampling.sample_dpmpp_3m_sde,
}
ANCESTRAL_SAMPLERS = ("k_euler_a", "k_dpm_2_a", "k_dpmpp_2s_a")
BROWNIAN_SAMPLERS = ("k_dpmpp_sde", "k_dpmpp_2m_sde", "k_dpmpp_3m_sde")
KARRAS_RHO = 7.0


def discrete_denoiser(model: GuidedModel, alphas_cumprod: torch.Tensor, prediction_type: str):
    if prediction_type == "v_prediction":
        return external.DiscreteVDDPMDenoiser(model, alphas_cumprod, quantize=False)
    return external.DiscreteEpsDDPMDenoiser(model, alphas_cumprod, quantize=False)


def schedule_sigmas(denoiser, schedule: str, steps: int) -> torch.Tensor:
    """The `steps + 1` sigmas of a full `steps`-step run on `schedule`, ending in 0."""
    sigma_min, sigma_max = float(denoiser.sigma_min), float(denoiser.sigma_max)
    device = denoiser.sigmas.device
    if schedule == "karras":
        return sampling.get_sigmas_karras(steps, sigma_min, sigma_max, rho=KARRAS_RHO, device=device)
    if schedule == "exponential":
        return sampling.get_sigmas_exponential(steps, sigma_min, sigma_max, device=device)
    if schedule == "simple":
        stride = len(denoiser.sigmas) / steps
        picked = [denoiser.sigmas[-(1 + int(i * stride))] for i in range(steps)]
        return sampling.append_zero(torch.stack(picked))
    return denoiser.get_sigmas(steps)


def run_sigmas(denoiser, schedule: str, steps: int, steps_to_run: int) -> torch.Tensor:
    """The last `steps_to_run` steps of the `steps`-step schedule: steps_to_run + 1 sigmas ending in 0."""
    return schedule_sigmas(denoiser, schedule, steps)[steps - steps_to_run :]


def reported_total(sampler_type: str, steps_to_run: int) -> int | None:
    """How many times the sampler calls back: once per step, except DPM fast (one per solver step of up to three
    model calls) and DPM adaptive (it picks its own step count)."""
    if sampler_type == "k_dpm_fast":
        return steps_to_run // 3 + 1
    if sampler_type == "k_dpm_adaptive":
        return None
    return steps_to_run


def sample_kdiffusion(
    sampler_type: str,
    denoise: KDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    sigma_min: float,
    generator: torch.Generator,
    callback: StepCallback,
) -> torch.Tensor:
    """Runs the k-diffusion sampler over `sigmas` from `x` (already at noise level sigmas[0])."""
    common = {"callback": callback, "disable": True}
    if sampler_type in ("k_dpm_fast", "k_dpm_adaptive"):
        sigma_max = float(sigmas[0])
        noise_sampler = generator_noise_sampler(x, generator)
        if sampler_type == "k_dpm_fast":
            n = len(sigmas) - 1
            return sampling.sample_dpm_fast(denoise, x, sigma_min, sigma_max, n, noise_sampler=noise_sampler, **common)
        return sampling.sample_dpm_adaptive(denoise, x, sigma_min, sigma_max, noise_sampler=noise_sampler, **common)
    if sampler_type in ANCESTRAL_SAMPLERS:
        common["noise_sampler"] = generator_noise_sampler(x, generator)
    if sampler_type in BROWNIAN_SAMPLERS:
        common["noise_sampler"] = brownian_noise_sampler(x, sigmas, generator)
    return SIGMA_SCHEDULE_SAMPLERS[sampler_type](denoise, x, sigmas, **common)


def generator_noise_sampler(x: torch.Tensor, generator: torch.Generator):
    return lambda sigma, sigma_next: cpu_noise(x.shape, generator, x)


def brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator):
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed)
