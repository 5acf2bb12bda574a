"""Our samplers against diffusers' schedulers (test-only reference), driven in diffusers' usual loop with the same
model function and the same initial noise.

Tolerances: both sides compute in float32, but our schedule's cumulative alphas are computed in float64 (CompVis)
and diffusers' in float32, and the k-samplers' fractional timesteps go through log/exp round trips on both sides,
so timesteps and coefficients differ in the last float32 bits. Over 10 steps at guidance 7.5 that leaves
differences of at most ~1e-5 on latents of magnitude up to ~8 (measured: 2e-6 .. 8e-6). We allow 5e-5 absolute
plus 1e-5 relative; an off-by-one timestep moves the result by ~6e-2.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from k_diffusion import external

from imaginairy.samplers import sample

TOLERANCE = {"atol": 5e-5, "rtol": 1e-5}
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SD_LEADING = {"steps_offset": 1, "set_alpha_to_one": False, "timestep_spacing": "leading"}


def diffusers_loop(scheduler, model, x, inputs, timesteps=None, **step_kwargs):
    """diffusers' pipeline loop: scale the input, one batched [uncond, cond] call, guidance, scheduler step."""
    context = torch.cat([inputs["uncond"], inputs["cond"]])
    scale = inputs["guidance_scale"]
    for t in scheduler.timesteps if timesteps is None else timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        out_uncond, out_cond = model(x_in, t.float().expand(x_in.shape[0]), context).chunk(2)
        guided = out_uncond + scale * (out_cond - out_uncond)
        x = scheduler.step(guided, t, x, **step_kwargs).prev_sample
    return x


def model_sigmas(schedule, steps: int) -> torch.Tensor:
    """The k-diffusion sigmas our k-samplers use: the model's discrete schedule at evenly spaced fractional t."""
    return external.DiscreteEpsDDPMDenoiser(None, schedule.alphas_cumprod().float(), quantize=False).get_sigmas(steps)


def run(sampler_type, model, schedule, inputs, seed=0, **kwargs):
    return sample(sampler_type, model, schedule, generator=torch.Generator().manual_seed(seed), **inputs, **kwargs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(model, schedule, inputs, prediction_type, eta):
    scheduler = DDIMScheduler(**SD_SCHEDULE, **SD_LEADING, clip_sample=False, prediction_type=prediction_type)
    scheduler.set_timesteps(inputs["steps"])
    # eta > 0: diffusers draws each step's noise from the generator we pass, in the same order and shape as ours.
    reference = diffusers_loop(
        scheduler, model, inputs["noise"], inputs, eta=eta, generator=torch.Generator().manual_seed(5)
    )
    ours = run("ddim", model, schedule, inputs, seed=5, ddim_eta=eta, prediction_type=prediction_type)
    torch.testing.assert_close(ours, reference, **TOLERANCE)


def test_plms_matches_diffusers_pndm_without_runge_kutta_steps(model, schedule, inputs):
    """PNDMScheduler(skip_prk_steps=True) takes the same steps as CompVis PLMS for epsilon models: its repeated
    second timestep is CompVis' second model call of the first step. (For v-prediction it converts the averaged v
    with the current latent instead of each v at its own latent, so there it is not CompVis PLMS; see
    test_sampler_runs.py for v-prediction PLMS checked against its epsilon equivalent.)"""
    scheduler = PNDMScheduler(**SD_SCHEDULE, **SD_LEADING, skip_prk_steps=True)
    scheduler.set_timesteps(inputs["steps"])
    reference = diffusers_loop(scheduler, model, inputs["noise"], inputs)
    ours = run("plms", model, schedule, inputs)
    torch.testing.assert_close(ours, reference, **TOLERANCE)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_k_euler_matches_diffusers_euler_with_the_same_sigmas(model, schedule, inputs, prediction_type):
    """diffusers spaces Euler's sigmas by linear interpolation in sigma; k-diffusion in log sigma. Passing our
    sigmas to `set_timesteps(sigmas=...)` makes the two runs take the same steps."""
    sigmas = model_sigmas(schedule, inputs["steps"])
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type=prediction_type)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    reference = diffusers_loop(scheduler, model, inputs["noise"] * sigmas[0], inputs)
    ours = run("k_euler", model, schedule, inputs, prediction_type=prediction_type)
    torch.testing.assert_close(ours, reference, **TOLERANCE)


def test_k_euler_img2img_matches_diffusers(model, schedule, inputs, init_latent):
    """diffusers img2img: run the last int(steps * strength) steps from init + noise * sigma at the first of them."""
    steps, strength = inputs["steps"], 0.6
    start = steps - int(steps * strength)
    sigmas = model_sigmas(schedule, steps)
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    scheduler.set_begin_index(start)
    x = init_latent + inputs["noise"] * sigmas[start]
    reference = diffusers_loop(scheduler, model, x, inputs, timesteps=scheduler.timesteps[start:])
    ours = run("k_euler", model, schedule, inputs, init_latent=init_latent, denoise_strength=strength)
    torch.testing.assert_close(ours, reference, **TOLERANCE)


def test_ddim_img2img_matches_diffusers(model, schedule, inputs, init_latent):
    steps, strength = inputs["steps"], 0.45
    start = steps - int(steps * strength)
    scheduler = DDIMScheduler(**SD_SCHEDULE, **SD_LEADING, clip_sample=False)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps[start:]
    x = scheduler.add_noise(init_latent, inputs["noise"], timesteps[:1])
    reference = diffusers_loop(scheduler, model, x, inputs, timesteps=timesteps)
    ours = run("ddim", model, schedule, inputs, init_latent=init_latent, denoise_strength=strength)
    torch.testing.assert_close(ours, reference, **TOLERANCE)


def test_k_dpmpp_2m_matches_diffusers_dpm_solver_plus_plus_2m(model, schedule, inputs):
    """At 10 steps our fractional timesteps 999, 888, ..., 0 are whole numbers, so diffusers' integer custom
    timesteps give the same sigmas. diffusers works on the variance-preserving latent x / sqrt(sigma^2 + 1), so its
    start is our start rescaled; at sigma 0 the two latents coincide. Its last step is first order, like ours."""
    steps = 10
    sigmas = model_sigmas(schedule, steps)
    scheduler = DPMSolverMultistepScheduler(
        **SD_SCHEDULE,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(timesteps=[999 - 111 * i for i in range(steps)])
    x = inputs["noise"] * sigmas[0] / (sigmas[0] ** 2 + 1) ** 0.5
    reference = diffusers_loop(scheduler, model, x, inputs)
    ours = run("k_dpmpp_2m", model, schedule, {**inputs, "steps": steps})
    torch.testing.assert_close(ours, reference, **TOLERANCE)


def sigma_to_t(schedule, sigma: torch.Tensor) -> torch.Tensor:
    """The fractional timestep of a sigma (interpolated in log sigma), where k-diffusion calls the model."""
    return external.DiscreteEpsDDPMDenoiser(None, schedule.alphas_cumprod().float(), quantize=False).sigma_to_t(sigma)


def karras_reference_loop(scheduler, model, schedule, x, inputs):
    """diffusers' loop, but calling the model at the fractional timestep of each Karras sigma: DPMSolverMultistep
    rounds those timesteps to whole numbers (EulerDiscrete does not), k-diffusion and A1111 do not round, so the
    comparison checks the sigmas and the solver, not that rounding."""
    context = torch.cat([inputs["uncond"], inputs["cond"]])
    scale = inputs["guidance_scale"]
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        t_model = sigma_to_t(schedule, scheduler.sigmas[i]).float().expand(x_in.shape[0])
        out_uncond, out_cond = model(x_in, t_model, context).chunk(2)
        x = scheduler.step(out_uncond + scale * (out_cond - out_uncond), t, x).prev_sample
    return x


def test_karras_sigmas_match_diffusers(schedule):
    """Same rho-7 spacing between the same sigma_min and sigma_max (ours from float64 alphas, diffusers' float32)."""
    from imaginairy.samplers.kdiffusion import schedule_sigmas

    denoiser = external.DiscreteEpsDDPMDenoiser(None, schedule.alphas_cumprod().float(), quantize=False)
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, use_karras_sigmas=True)
    scheduler.set_timesteps(12)
    torch.testing.assert_close(schedule_sigmas(denoiser, "karras", 12), scheduler.sigmas, rtol=1e-5, atol=1e-6)


def test_k_euler_karras_matches_diffusers_euler_with_karras_sigmas(model, schedule, inputs):
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, use_karras_sigmas=True)
    scheduler.set_timesteps(inputs["steps"])
    reference = diffusers_loop(scheduler, model, inputs["noise"] * scheduler.init_noise_sigma, inputs)
    ours = run("k_euler", model, schedule, inputs, sigma_schedule="karras")
    torch.testing.assert_close(ours, reference, **TOLERANCE)
    assert not torch.allclose(ours, run("k_euler", model, schedule, inputs), **TOLERANCE)  # the schedule matters


def test_k_dpmpp_2m_karras_matches_diffusers_dpm_solver_with_karras_sigmas(model, schedule, inputs):
    scheduler = DPMSolverMultistepScheduler(
        **SD_SCHEDULE,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        final_sigmas_type="zero",
        use_karras_sigmas=True,
    )
    scheduler.set_timesteps(inputs["steps"])
    sigma_max = scheduler.sigmas[0]
    x = inputs["noise"] * sigma_max / (sigma_max**2 + 1) ** 0.5
    reference = karras_reference_loop(scheduler, model, schedule, x, inputs)
    ours = run("k_dpmpp_2m", model, schedule, inputs, sigma_schedule="karras")
    torch.testing.assert_close(ours, reference, **TOLERANCE)
    assert not torch.allclose(ours, run("k_dpmpp_2m", model, schedule, inputs), **TOLERANCE)
