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

from imaginairy.samplers.base import GuidedModel, KeptRegion, StepReporter
from imaginairy.samplers.ddim import (
    blend_at_level,
    ddim_step,
    eps_and_x0,
    level_after,
    timestep_batch,
)

ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_plms(
    model: GuidedModel,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: list[int],
    *,
    prediction_type: str,
    kept: KeptRegion | None,
    reporter: StepReporter,
) -> torch.Tensor:
    """Runs `timesteps` (highest first) from `x`; `kept` is blended in after every step at the next level."""
    old_eps: list[torch.Tensor] = []

    def predict_eps(x: torch.Tensor, t: int) -> torch.Tensor:
        reporter.before_model_call()
        return eps_and_x0(model(x, timestep_batch(t, x)), x, float(alphas_cumprod[t]), prediction_type)[0]

    for i, t in enumerate(timesteps):
        alpha, alpha_prev = float(alphas_cumprod[t]), level_after(alphas_cumprod, timesteps, i)
        is_last = i == len(timesteps) - 1
        eps = predict_eps(x, t)
        if old_eps:
            history = [eps, *reversed(old_eps)]
            eps_prime = sum(c * e for c, e in zip(ADAMS_BASHFORTH[len(old_eps)], history))
        else:
            x_next = ddim_step(x0_from_eps(x, eps, alpha), eps, alpha, alpha_prev, 0.0, None)
            if kept is not None:
                x_next = blend_at_level(kept, x_next, alpha_prev, is_last=is_last)
            t_next = t if is_last else timesteps[i + 1]
            eps_prime = (eps + predict_eps(x_next, t_next)) / 2
        x0 = x0_from_eps(x, eps_prime, alpha)
        x = ddim_step(x0, eps_prime, alpha, alpha_prev, 0.0, None)
        if kept is not None:
            x = blend_at_level(kept, x, alpha_prev, is_last=is_last)
            x0 = kept.blend(x0, kept.init_latent)
        old_eps = [*old_eps, eps][-3:]
        reporter.step_done(i + 1, x0)
    return x


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    return eps_and_x0(eps, x, alpha, "epsilon")[1]
