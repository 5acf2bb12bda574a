"""DDIM (Song et al. 2020), on the evenly spaced timesteps CompVis and diffusers ("leading", offset 1) use.

The latents here are the model's own noisy latents x_t = sqrt(a_t) * x_0 + sqrt(1 - a_t) * eps, with a_t the
cumulative alpha at integer timestep t. The DDPM helpers below are shared with PLMS.
"""

from __future__ import annotations

import torch

from imaginairy.samplers.base import GuidedModel, KeptRegion, StepReporter, cpu_noise


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The `steps` timesteps to visit, highest first.

    CompVis' and diffusers' evenly spaced "leading" timesteps 1, 1 + r, 1 + 2r, ... (r = num_train_timesteps //
    steps) when they start less than two spacings below the top of the schedule (50 steps: 981, 5 steps: 801);
    for step counts where the integer ratio leaves them far short of it (400 steps would start at t = 799, as if
    pure noise were a half-denoised latent; 1000 steps at t = 1000, past the end) the timesteps are spread evenly
    over the whole schedule instead.
    """
    step_ratio = num_train_timesteps // steps
    leading = [i * step_ratio + 1 for i in reversed(range(steps))]
    top_gap = num_train_timesteps - 1 - leading[0]
    if 0 <= top_gap < 2 * step_ratio:
        return leading
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long().tolist()


def level_after(alphas_cumprod: torch.Tensor, timesteps: list[int], index: int) -> float:
    """a at the timestep after `timesteps[index]` in sampling order; after the last one, a_0 (as in CompVis)."""
    return float(alphas_cumprod[timesteps[index + 1] if index + 1 < len(timesteps) else 0])


def noised(x0: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """x_t for a clean latent `x0` and unit `noise` at the level with cumulative alpha `alpha` (q_sample)."""
    return alpha**0.5 * x0 + (1 - alpha) ** 0.5 * noise


def eps_and_x0(output: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str):
    """The noise and clean-latent estimates in a raw model output (epsilon or v)."""
    if prediction_type == "v_prediction":
        return alpha**0.5 * output + (1 - alpha) ** 0.5 * x, alpha**0.5 * x - (1 - alpha) ** 0.5 * output
    return output, (x - (1 - alpha) ** 0.5 * output) / alpha**0.5


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha: float, alpha_prev: float, eta: float, generator: torch.Generator | None
) -> torch.Tensor:
    """x at the previous level from the estimates at this one; eta > 0 adds fresh noise from `generator`."""
    sigma = eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)) ** 0.5
    x_prev = alpha_prev**0.5 * x0 + (1 - alpha_prev - sigma**2) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * cpu_noise(x0.shape, generator, x0)
    return x_prev


def timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def sample_ddim(
    model: GuidedModel,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    prediction_type: str,
    eta: float,
    generator: torch.Generator,
    kept: KeptRegion | None,
    reporter: StepReporter,
) -> torch.Tensor:
    """Runs `timesteps` (highest first) from `x`; `kept` is blended in after every step at the next level."""
    for i, t in enumerate(timesteps):
        alpha, alpha_prev = float(alphas_cumprod[t]), level_after(alphas_cumprod, timesteps, i)
        reporter.before_model_call()
        eps, x0 = eps_and_x0(model(x, timestep_batch(t, x)), x, alpha, prediction_type)
        x = ddim_step(x0, eps, alpha, alpha_prev, eta, generator)
        if kept is not None:
            x = blend_at_level(kept, x, alpha_prev, is_last=i == len(timesteps) - 1)
            x0 = kept.blend(x0, kept.init_latent)
        reporter.step_done(i + 1, x0)
    return x


def blend_at_level(kept: KeptRegion, x: torch.Tensor, alpha: float, *, is_last: bool) -> torch.Tensor:
    """`x` with the kept region set to the init latent noised to the level `alpha` (after the last step: clean)."""
    target = kept.init_latent if is_last else noised(kept.init_latent, kept.noise, alpha)
    return kept.blend(x, target)
