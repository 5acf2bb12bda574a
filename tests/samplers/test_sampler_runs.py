"""Every sampler: determinism, img2img, masks, v-prediction, progress, cancellation and input errors."""

from __future__ import annotations

import threading

import pytest
import torch

from imaginairy.errors import GenerationCancelled, InvalidInputError
from imaginairy.samplers import SAMPLER_TYPES, NoiseSchedule, sample
from imaginairy.samplers.table import SAMPLERS

STOCHASTIC_SAMPLERS = tuple(sampler.name for sampler in SAMPLERS if sampler.stochastic)
DETERMINISTIC_SAMPLERS = tuple(s for s in SAMPLER_TYPES if s not in STOCHASTIC_SAMPLERS)


def run(sampler_type, model, schedule, inputs, seed=0, **kwargs):
    return sample(sampler_type, model, schedule, generator=torch.Generator().manual_seed(seed), **inputs, **kwargs)


@pytest.mark.parametrize("sampler_type", SAMPLER_TYPES)
def test_txt2img_is_finite_and_bit_identical_for_a_seed_whatever_the_global_rng(sampler_type, model, schedule, inputs):
    torch.manual_seed(1)
    first = run(sampler_type, model, schedule, inputs, ddim_eta=0.5)
    torch.manual_seed(2)
    second = run(sampler_type, model, schedule, inputs, ddim_eta=0.5)
    assert first.shape == inputs["noise"].shape
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("sampler_type", [*STOCHASTIC_SAMPLERS, "ddim"])
def test_stochastic_samplers_draw_their_noise_from_the_generator(sampler_type, model, schedule, inputs):
    first = run(sampler_type, model, schedule, inputs, seed=1, ddim_eta=1.0)
    second = run(sampler_type, model, schedule, inputs, seed=2, ddim_eta=1.0)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("sampler_type", DETERMINISTIC_SAMPLERS)
def test_deterministic_samplers_ignore_the_generator(sampler_type, model, schedule, inputs):
    first = run(sampler_type, model, schedule, inputs, seed=1)
    second = run(sampler_type, model, schedule, inputs, seed=2)
    assert torch.equal(first, second)


@pytest.mark.parametrize("sampler_type", SAMPLER_TYPES)
@pytest.mark.parametrize("mask_kind", ["binary_mask", "soft_mask"])
def test_masked_img2img_keeps_the_init_latent_exactly_where_the_mask_is_0(
    sampler_type, mask_kind, model, schedule, inputs, init_latent, request
):
    mask = request.getfixturevalue(mask_kind)
    kwargs = {"init_latent": init_latent, "denoise_strength": 0.6, "mask": mask}
    first = run(sampler_type, model, schedule, inputs, **kwargs)
    second = run(sampler_type, model, schedule, inputs, **kwargs)
    kept = (mask == 0).expand_as(init_latent)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert torch.equal(first[kept], init_latent[kept])
    assert not torch.allclose(first[~kept], init_latent[~kept])


@pytest.mark.parametrize("sampler_type", ["ddim", "plms", "k_euler_a", "k_dpmpp_sde", "k_dpm_adaptive"])
def test_model_always_sees_the_kept_region_on_the_noised_init_path(
    sampler_type, model, schedule, inputs, init_latent, binary_mask
):
    """With a 0/1 mask the kept region of every model input is the init latent noised to that input's level
    with the run's noise (DDIM/PLMS: sqrt(a) init + sqrt(1 - a) noise; k-samplers the same, as
    (init + sigma noise) * c_in)."""
    run(sampler_type, model, schedule, inputs, init_latent=init_latent, denoise_strength=0.7, mask=binary_mask)
    alphas_cumprod = schedule.alphas_cumprod()
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()
    kept = (binary_mask == 0).expand_as(init_latent)
    for x, t, _context in model.calls:
        x_cond = x  # shared by the unconditional and conditional contexts
        sigma = interpolate(log_sigmas, t[0].double()).exp()
        alpha = 1 / (1 + sigma**2)
        expected = (alpha**0.5 * init_latent.double() + (1 - alpha) ** 0.5 * inputs["noise"].double()).float()
        torch.testing.assert_close(x_cond[kept], expected[kept], atol=2e-5, rtol=1e-5)


def interpolate(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values at fractional index t, linearly interpolated."""
    low = t.floor().long().clamp(max=len(values) - 2)
    w = t - low
    return (1 - w) * values[low] + w * values[low + 1]


@pytest.mark.parametrize("sampler_type", SAMPLER_TYPES)
def test_v_prediction_model_gives_the_same_result_as_its_epsilon_equivalent(sampler_type, model, schedule, inputs):
    """A v model built from the epsilon model (v = sqrt(a) eps - sqrt(1 - a) x0 at each call's own timestep)
    must sample the same latents; this checks every sampler's v handling, PLMS converting each output at its own
    latent and timestep included."""
    alphas_cumprod = schedule.alphas_cumprod()
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()

    def v_model(x, t, context):
        eps = model(x, t, context)
        groups = context.shape[0] // x.shape[0]
        x, t = x.repeat(groups, 1, 1, 1), t.repeat(groups)
        alpha = (1 / (1 + interpolate(log_sigmas, t.double()).exp() ** 2)).float()[:, None, None, None]
        x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
        return alpha**0.5 * eps - (1 - alpha) ** 0.5 * x0

    from_eps = run(sampler_type, model, schedule, inputs)
    from_v = run(sampler_type, v_model, schedule, inputs, prediction_type="v_prediction")
    torch.testing.assert_close(from_v, from_eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("sampler_type", "strength", "expected_t"),
    [
        ("ddim", 0.3, [201, 101, 1]),
        ("plms", 0.3, [201, 101, 101, 1]),  # PLMS' first step calls the model twice
        ("k_euler", 0.3, [222, 111, 0]),
        ("ddim", 1.0, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
    ],
)
def test_img2img_runs_the_last_int_steps_times_strength_steps(
    sampler_type, strength, expected_t, model, schedule, inputs, init_latent
):
    run(sampler_type, model, schedule, inputs, init_latent=init_latent, denoise_strength=strength)
    called_t = [float(t[0]) for _x, t, _c in model.calls]
    assert called_t == pytest.approx(expected_t, abs=1e-3)


@pytest.mark.parametrize("sampler_type", ["ddim", "k_euler", "k_dpm_fast"])
def test_img2img_starts_from_the_init_latent_noised_with_the_run_noise(
    sampler_type, model, schedule, inputs, init_latent
):
    run(sampler_type, model, schedule, inputs, init_latent=init_latent, denoise_strength=0.5)
    x, t, _context = model.calls[0]
    alpha = float(schedule.alphas_cumprod()[round(float(t[0]))])
    expected = alpha**0.5 * init_latent + (1 - alpha) ** 0.5 * inputs["noise"]
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler_type", ["ddim", "k_euler"])
def test_img2img_with_no_step_to_run_returns_the_init_latent(sampler_type, model, schedule, inputs, init_latent):
    result = run(sampler_type, model, schedule, inputs, init_latent=init_latent, denoise_strength=0.05)
    assert torch.equal(result, init_latent)
    assert model.calls == []


def test_guidance_batches_uncond_then_cond_in_one_call_sharing_the_latents(model, schedule, inputs):
    run("k_euler", model, schedule, inputs)
    batch = inputs["noise"].shape[0]
    assert len(model.calls) == inputs["steps"]
    x, t, context = model.calls[0]
    assert x.shape[0] == t.shape[0] == batch
    assert torch.equal(context, torch.cat([inputs["uncond"], inputs["cond"]]))


def test_guidance_scale_1_calls_the_model_with_cond_only(model, schedule, inputs):
    result = run("ddim", model, schedule, {**inputs, "guidance_scale": 1.0})
    cond_only = run("ddim", lambda x, t, c: model(x, t, inputs["cond"]), schedule, {**inputs, "guidance_scale": 1.0})
    assert all(x.shape[0] == inputs["noise"].shape[0] for x, _t, _c in model.calls)
    assert torch.equal(result, cond_only)


@pytest.mark.parametrize("sampler_type", SAMPLER_TYPES)
def test_callback_counts_steps_from_1_to_total(sampler_type, model, schedule, inputs, init_latent):
    reports = []
    run(
        sampler_type,
        model,
        schedule,
        inputs,
        init_latent=init_latent,
        denoise_strength=0.5,
        callback=lambda step, total, latents: reports.append((step, total, latents.shape)),
    )
    steps = [step for step, _total, _shape in reports]
    totals = {total for _step, total, _shape in reports}
    assert {shape for _step, _total, shape in reports} == {init_latent.shape}
    if sampler_type == "k_dpm_adaptive":
        assert totals == {None}
        assert steps == list(range(1, len(steps) + 1))
    else:
        expected_total = 5 // 3 + 1 if sampler_type == "k_dpm_fast" else 5
        assert totals == {expected_total}
        assert steps == list(range(1, expected_total + 1))


@pytest.mark.parametrize("sampler_type", SAMPLER_TYPES)
def test_cancel_event_stops_before_the_next_model_call(sampler_type, model, schedule, inputs):
    cancel_event = threading.Event()

    def cancel_at_step_2(step, total, latents):
        if step == 2:
            cancel_event.set()

    with pytest.raises(GenerationCancelled):
        run(sampler_type, model, schedule, inputs, callback=cancel_at_step_2, cancel_event=cancel_event)
    calls_when_cancelled = len(model.calls)
    assert 0 < calls_when_cancelled < 10


def test_set_cancel_event_stops_before_any_model_call(model, schedule, inputs):
    cancel_event = threading.Event()
    cancel_event.set()
    with pytest.raises(GenerationCancelled):
        run("k_euler", model, schedule, inputs, cancel_event=cancel_event)
    assert model.calls == []


@pytest.mark.parametrize("sampler_type", ["ddim", "plms", "k_dpmpp_2m", "k_dpm_fast"])
def test_callback_returning_true_cancels(sampler_type, model, schedule, inputs):
    steps_seen = []

    def stop_at_step_3(step, total, latents):
        steps_seen.append(step)
        return step == 3

    with pytest.raises(GenerationCancelled):
        run(sampler_type, model, schedule, inputs, callback=stop_at_step_3)
    assert steps_seen == [1, 2, 3]


def test_callback_raising_generation_cancelled_stops_the_run(model, schedule, inputs):
    def cancel(step, total, latents):
        raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        run("k_lms", model, schedule, inputs, callback=cancel)
    assert len(model.calls) == 1


def test_unknown_sampler_type_names_the_valid_ones(model, schedule, inputs):
    with pytest.raises(InvalidInputError, match="k_dpmpp_2m") as error:
        run("k_nonsense", model, schedule, inputs)
    assert "k_nonsense" in str(error.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"denoise_strength": 0.5},
        {"mask": torch.ones(1, 1, 8, 8)},
        {"prediction_type": "sample"},
        {"steps": 0},
    ],
)
def test_unusable_inputs_are_rejected(kwargs, model, schedule, inputs):
    with pytest.raises(InvalidInputError):
        run("ddim", model, schedule, {**inputs, **kwargs})


def test_scaled_linear_schedule_matches_compvis_values():
    alphas_cumprod = NoiseSchedule(0.00085, 0.012, 1000).alphas_cumprod()
    assert alphas_cumprod.dtype == torch.float64
    assert alphas_cumprod.shape == (1000,)
    assert float(alphas_cumprod[0]) == pytest.approx(1 - 0.00085, rel=1e-12)
    assert float(alphas_cumprod[-1]) == pytest.approx(0.0046600, rel=1e-3)
    assert torch.all(alphas_cumprod[1:] < alphas_cumprod[:-1])


@pytest.mark.parametrize("steps", [1, 5, 20, 50, 150, 333, 334, 400, 501, 750, 999, 1000])
def test_ddim_timesteps_start_near_pure_noise_for_every_step_count(steps):
    from imaginairy.samplers.ddim import ddim_timesteps

    timesteps = ddim_timesteps(1000, steps)
    assert len(timesteps) == steps == len(set(timesteps))
    assert timesteps == sorted(timesteps, reverse=True)
    assert 999 - timesteps[0] < 2 * max(1000 // steps, 1) and (steps == 1 or timesteps[-1] in (0, 1))
    if steps in (5, 20, 50):  # CompVis' and diffusers' leading spacing, kept for parity
        assert timesteps == [1 + i * (1000 // steps) for i in reversed(range(steps))]
