"""DDIM (Song et al. 2020), on the evenly spaced timesteps CompVis and diffusers ("leading", offset 1) use.

The latents here are the model's own noisy latents x_t = sqrt(a_t) * x_0 + sqrt(1 - a_t) * eps, with a_t the
cumulative alpha at integer timestep t. The timestep helpers below are shared with PLMS.
"""

from __future__ import annotations

import torch

from imaginairy.samplers.base import DDPMEstimator, StepCallback, cpu_noise


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


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha: float, alpha_prev: float, eta: float, generator: torch.Generator | None
) -> torch.Tensor:
    """x at the previous level from the estimates at this one; eta > 0 adds fresh noise from `generator`."""
    sigma = eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)) ** 0.5
    x_prev = alpha_prev**0.5 * x0 + (1 - alpha_prev - sigma**2) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * cpu_noise(x0.shape, generator, x0)
    return x_prev


def sample_ddim(
    model: DDPMEstimator,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    eta: float,
    generator: torch.Generator,
    callback: StepCallback,
) -> torch.Tensor:
    """Runs `timesteps` (highest first) from `x`."""
    for i, t in enumerate(timesteps):
        alpha, alpha_prev = float(alphas_cumprod[t]), level_after(alphas_cumprod, timesteps, i)
        _, eps, x0 = model(x, t)
        x = ddim_step(x0, eps, alpha, alpha_prev, eta, generator)
        callback({"i": i, "denoised": x0})
    return x
