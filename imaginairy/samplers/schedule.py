"""The noise schedule a latent diffusion model was trained with.

Stable Diffusion uses the CompVis "scaled linear" schedule: the square roots of the betas are evenly spaced between
`sqrt(linear_start)` and `sqrt(linear_end)` over `num_timesteps` training steps. The cumulative products of the
alphas are computed in float64 (as CompVis does) and handed to the samplers as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """The config values `model.params.{linear_start, linear_end, timesteps}` of a CompVis model config."""

    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar_t for t = 0 .. num_timesteps - 1, float64 on the CPU."""
        sqrt_betas = torch.linspace(
            self.linear_start**0.5, self.linear_end**0.5, self.num_timesteps, dtype=torch.float64
        )
        betas = sqrt_betas**2
        return torch.cumprod(1.0 - betas, dim=0)
