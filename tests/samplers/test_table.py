"""The sampler table: A1111 names and aliases, the schedules' sigmas, and every k-sampler on every schedule."""

from __future__ import annotations

import math

import pytest
import torch
from k_diffusion import external

from imaginairy.errors import InvalidInputError
from imaginairy.samplers import sample
from imaginairy.samplers.kdiffusion import SIGMA_SCHEDULE_SAMPLERS, schedule_sigmas
from imaginairy.samplers.table import (
    A1111_SAMPLER_NAMES,
    SAMPLER_TYPES,
    SCHEDULES,
    resolve_sampler_name,
    resolve_schedule_name,
)
from imaginairy.schema import ImaginePrompt

# A1111's names (its "Sampling method" list and the combined names of its older versions) and what they are.
A1111_NAMES = {
    "DPM++ 2M Karras": ("k_dpmpp_2m", "karras"),
    "DPM++ 2M": ("k_dpmpp_2m", None),
    "Euler a": ("k_euler_a", None),
    "Euler": ("k_euler", None),
    "DDIM": ("ddim", None),
    "PLMS": ("plms", None),
    "DPM++ SDE Karras": ("k_dpmpp_sde", "karras"),
    "DPM++ 2M SDE Karras": ("k_dpmpp_2m_sde", "karras"),
    "DPM++ 2M SDE": ("k_dpmpp_2m_sde", None),
    "DPM++ 3M SDE Exponential": ("k_dpmpp_3m_sde", "exponential"),
    "LMS": ("k_lms", None),
    "LMS Karras": ("k_lms", "karras"),
    "Heun": ("k_heun", None),
    "DPM2": ("k_dpm_2", None),
    "DPM2 a": ("k_dpm_2_a", None),
    "DPM2 a Karras": ("k_dpm_2_a", "karras"),
    "DPM++ 2S a": ("k_dpmpp_2s_a", None),
    "DPM fast": ("k_dpm_fast", None),
    "DPM adaptive": ("k_dpm_adaptive", None),
}


@pytest.mark.parametrize("name, expected", A1111_NAMES.items())
def test_a1111_names_resolve_to_a_sampler_and_schedule(name, expected):
    assert resolve_sampler_name(name) == expected
    assert resolve_sampler_name(f"  {name.lower()} ") == expected


def test_every_sampler_has_one_a1111_name_and_is_its_own_alias():
    assert sorted(A1111_SAMPLER_NAMES) == sorted(SAMPLER_TYPES)
    assert len(set(A1111_SAMPLER_NAMES.values())) == len(SAMPLER_TYPES)
    for name in SAMPLER_TYPES:
        assert resolve_sampler_name(name) == (name, None)
        assert resolve_sampler_name(A1111_SAMPLER_NAMES[name]) == (name, None)
    assert resolve_sampler_name("DDIM Karras") is None  # DDIM takes its own timesteps
    assert resolve_sampler_name("k_dpmpp_3m") is None
    assert resolve_schedule_name("Karras") == "karras" and resolve_schedule_name("sgm_uniform") is None


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"sampler_type": "DPM++ 2M Karras"}, ("k_dpmpp_2m", "karras")),
        ({"sampler_type": "Euler a"}, ("k_euler_a", "uniform")),
        ({"sampler_type": "DPM++ 2M", "schedule": "Karras"}, ("k_dpmpp_2m", "karras")),
        ({"sampler_type": "DPM++ 2M Karras", "schedule": "karras"}, ("k_dpmpp_2m", "karras")),
        ({"sampler_type": "k_euler", "schedule": "simple"}, ("k_euler", "simple")),
        ({}, ("k_dpmpp_2m", "uniform")),
    ],
)
def test_prompt_normalises_sampler_names_and_schedules(settings, expected):
    prompt = ImaginePrompt("x", **settings)
    assert (prompt.sampler_type, prompt.schedule) == expected
    assert ImaginePrompt.from_metadata(prompt.to_metadata()).schedule == expected[1]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"schedule": "sgm"}, "schedule 'sgm' is not supported; choose one of: 'uniform', 'karras', 'exponential'"),
        ({"sampler_type": "DPM++ 2M Karras", "schedule": "exponential"}, "names the 'karras' schedule"),
        ({"sampler_type": "ddim", "schedule": "karras"}, "applies to the k-samplers only"),
        ({"sampler_type": "k_dpm_fast", "schedule": "karras"}, "applies to the k-samplers only"),
        ({"sampler_type": 7}, "sampler_type 7 is not supported"),
    ],
)
def test_prompt_refuses_schedules_it_cannot_apply(settings, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        ImaginePrompt("x", **settings)


@pytest.fixture
def denoiser(schedule):
    return external.DiscreteEpsDDPMDenoiser(None, schedule.alphas_cumprod().float(), quantize=False)


def test_schedules_span_the_models_sigmas_and_end_in_zero(denoiser):
    for name in SCHEDULES:
        sigmas = schedule_sigmas(denoiser, name, 10)
        assert sigmas.shape == (11,) and sigmas[-1] == 0, name
        assert torch.all(sigmas[:-1] > sigmas[1:]), name  # strictly decreasing
        torch.testing.assert_close(sigmas[0], denoiser.sigma_max, rtol=1e-6, atol=0)
    torch.testing.assert_close(schedule_sigmas(denoiser, "uniform", 10), denoiser.get_sigmas(10))


def test_exponential_sigmas_are_evenly_spaced_in_log_sigma(denoiser):
    log_sigmas = schedule_sigmas(denoiser, "exponential", 8)[:-1].log()
    torch.testing.assert_close(log_sigmas[-1], denoiser.sigma_min.log())
    steps = log_sigmas[:-1] - log_sigmas[1:]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-4, atol=1e-5)


def test_simple_sigmas_are_the_models_own_at_whole_timesteps(denoiser):
    sigmas = schedule_sigmas(denoiser, "simple", 4)
    # 1000 training steps in 4: timesteps 999, 749, 499, 249 (A1111's and ComfyUI's "simple")
    assert torch.equal(sigmas[:-1], denoiser.sigmas[[999, 749, 499, 249]])


def test_karras_sigmas_follow_rho_7(denoiser):
    sigmas = schedule_sigmas(denoiser, "karras", 6)[:-1].double()
    ramp = (sigmas ** (1 / 7) - sigmas[0] ** (1 / 7)) / (sigmas[-1] ** (1 / 7) - sigmas[0] ** (1 / 7))
    torch.testing.assert_close(ramp, torch.linspace(0, 1, 6, dtype=torch.float64), rtol=0, atol=1e-5)
    assert math.isclose(float(sigmas[-1]), float(denoiser.sigma_min), rel_tol=1e-5)


@pytest.mark.parametrize("sampler_type", sorted(SIGMA_SCHEDULE_SAMPLERS))
@pytest.mark.parametrize("sigma_schedule", ["karras", "exponential", "simple"])
def test_every_k_sampler_runs_on_every_schedule(sampler_type, sigma_schedule, model, schedule, inputs):
    def run(name):
        return sample(sampler_type, model, schedule, generator=torch.Generator().manual_seed(0), **inputs,
                      sigma_schedule=name)

    latent = run(sigma_schedule)
    assert torch.isfinite(latent).all()
    assert not torch.allclose(latent, run("uniform"), atol=1e-4)


def test_sample_refuses_a_schedule_for_ddim(model, schedule, inputs):
    with pytest.raises(InvalidInputError, match="k-samplers only"):
        sample("ddim", model, schedule, generator=torch.Generator(), **inputs, sigma_schedule="karras")
