"""What every sampler shares: classifier-free guidance, the kept region of an inpainting mask, progress and
cancellation, and the img2img step count."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from imaginairy.errors import GenerationCancelled

# (x [B, ...], t [B], context [k*B, ...]) -> output [k*B, ...]: the latents are shared by k stacked context groups.
ModelFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GuidedModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressCallback = Callable[[int, "int | None", torch.Tensor], "bool | None"]


def guided_model_fn(
    model_fn: ModelFunction, cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float
) -> GuidedModel:
    """`(x, t) -> guided model output`, with classifier-free guidance done in one batched call.

    The context batch is `[uncond, cond]`, the order diffusers uses; the latents go in once, shared by both (the
    UNet widens them to the context batch where they first differ). The output is
    `uncond + guidance_scale * (cond - uncond)`. A scale of 1 is the conditional output alone, so the unconditional
    half is not computed; so is a scale of 0, which means "no guidance" (distilled Turbo models are sampled so;
    diffusers also skips the unconditional pass there) rather than the unconditional output alone.
    """
    if guidance_scale in (0, 1):
        return lambda x, t: model_fn(x, t, cond)
    context = torch.cat([uncond, cond])

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_uncond, out_cond = model_fn(x, t, context).chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return guided


def steps_to_run(steps: int, denoise_strength: float) -> int:
    """How many of `steps` an img2img run takes: the last `int(steps * strength)` (diffusers' convention)."""
    return min(int(steps * denoise_strength), steps)


@dataclass(frozen=True)
class KeptRegion:
    """The part of `init_latent` an inpainting run keeps: `mask` is 1 where the sampler regenerates, 0 where the
    init latent stays (fractions blend). `noise` is the run's initial noise, used to noise the init latent to each
    level so the kept region always sits on the same noisy path."""

    init_latent: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor

    def blend(self, x: torch.Tensor, noised_init: torch.Tensor) -> torch.Tensor:
        return self.mask * x + (1 - self.mask) * noised_init


class StepReporter:
    """Progress and cancellation for one sampling run.

    `before_model_call()` raises `GenerationCancelled` once `cancel_event` is set; `step_done()` passes the step on
    to the user's callback and raises `GenerationCancelled` when the callback answers True.
    """

    def __init__(self, callback: ProgressCallback | None, cancel_event: threading.Event | None, total: int | None):
        self.callback = callback
        self.cancel_event = cancel_event
        self.total = total

    def before_model_call(self) -> None:
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise GenerationCancelled("Generation cancelled: the cancel event was set.")

    def step_done(self, step: int, denoised: torch.Tensor) -> None:
        if self.callback is not None and self.callback(step, self.total, denoised):
            raise GenerationCancelled("Generation cancelled: the progress callback asked to stop.")


def cpu_noise(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Unit Gaussian noise drawn from the CPU `generator` and moved to `like`'s device, so a seed gives the same
    numbers on every device."""
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
