"""A small analytic stand-in for the UNet, and the inputs of a sampling run."""

from __future__ import annotations

import pytest
import torch

from imaginairy.samplers import NoiseSchedule

BATCH = 2
LATENT_SHAPE = (BATCH, 4, 8, 8)
CONTEXT_SHAPE = (BATCH, 3, 8)


class AnalyticModel:
    """`(x, t, context) -> output` (the samplers' ModelFunction contract): a fixed 1x1 convolution of x plus a
    timestep-dependent term from the context, so conditional and unconditional outputs differ and guidance matters.
    Counts its calls and keeps its inputs."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.weight = 0.8 * torch.eye(4) + 0.1 * torch.randn(4, 4, generator=generator)
        self.context_projection = 0.5 * torch.randn(CONTEXT_SHAPE[-1], 4, generator=generator)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone(), context))
        groups = context.shape[0] // x.shape[0]  # the latents are shared by stacked context groups ([uncond; cond])
        x, t = x.repeat(groups, 1, 1, 1), t.repeat(groups)
        mixed = (self.weight[None, :, :, None, None] * x[:, None]).sum(dim=2)  # 1x1 conv, without BLAS threads
        context_term = (context.mean(dim=1)[:, :, None] * self.context_projection).sum(dim=1)
        return mixed + (torch.cos(t / 400) * 0.5)[:, None, None, None] * context_term[:, :, None, None]


@pytest.fixture
def model() -> AnalyticModel:
    return AnalyticModel()


@pytest.fixture
def inputs() -> dict:
    """Keyword arguments of `sample` for a txt2img run at guidance 7.5, plus an init latent and mask to add."""
    generator = torch.Generator().manual_seed(1234)
    return {
        "noise": torch.randn(LATENT_SHAPE, generator=generator),
        "cond": torch.randn(CONTEXT_SHAPE, generator=generator),
        "uncond": torch.randn(CONTEXT_SHAPE, generator=generator),
        "guidance_scale": 7.5,
        "steps": 10,
    }


@pytest.fixture
def init_latent() -> torch.Tensor:
    return 0.8 * torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(99))


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


@pytest.fixture
def binary_mask() -> torch.Tensor:
    """Regenerate the left half of the latent, keep the right half."""
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    return mask


@pytest.fixture
def soft_mask() -> torch.Tensor:
    """0 on the right, ramping to 1 on the left, so the blending of fractional values is exercised too."""
    return torch.linspace(1, 0, 8).clamp(0, 1).expand(1, 1, 8, 8).clone() * (torch.arange(8) < 6).float()
