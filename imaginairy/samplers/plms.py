"""PLMS: pseudo linear multistep sampling (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models"), as
CompVis runs it.

Each step is a deterministic DDIM step taken with a combination of the current and up to three earlier noise
estimates (Adams-Bashforth coefficients). The first step has no history, so it evaluates the model a second time at
the DDIM estimate of the next level and averages the two (pseudo improved Euler). Model outputs are converted to
noise estimates at their own latent and timestep before being combined, which for v-prediction models is what
CompVis does.
"""

from __future__ import annotations

import torch

from imaginairy.samplers.base import DDPMEstimator, StepCallback, eps_and_x0
from imaginairy.samplers.ddim import ddim_step, level_after

ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_plms(
    model: DDPMEstimator,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    callback: StepCallback,
) -> torch.Tensor:
    """Runs `timesteps` (highest first) from `x`."""
    old_eps: list[torch.Tensor] = []
    for i, t in enumerate(timesteps):
        alpha, alpha_prev = float(alphas_cumprod[t]), level_after(alphas_cumprod, timesteps, i)
        x, eps, _ = model(x, t)
        if old_eps:
            history = [eps, *reversed(old_eps)]
            eps_prime = sum(c * e for c, e in zip(ADAMS_BASHFORTH[len(old_eps)], history))
        else:
            x_next = ddim_step(x0_from_eps(x, eps, alpha), eps, alpha, alpha_prev, 0.0, None)
            t_next = t if i == len(timesteps) - 1 else timesteps[i + 1]
            eps_prime = (eps + model(x_next, t_next).eps) / 2
        x0 = x0_from_eps(x, eps_prime, alpha)
        x = ddim_step(x0, eps_prime, alpha, alpha_prev, 0.0, None)
        old_eps = [*old_eps, eps][-3:]
        callback({"i": i, "denoised": x0})
    return x


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    return eps_and_x0(eps, x, alpha, "epsilon")[1]
