"""The model as every sampler sees it, wrapped once by `sample()`: classifier-free guidance over the conditioning,
the kept region of an inpainting mask, cancellation and progress. The samplers themselves are flat loops.

Two views of the one wrapped model, for the two families of samplers:
- `ddpm_estimator`: `(x, t) -> Estimate(x, eps, x0)` at a whole training timestep (DDIM, PLMS). The kept region
  of the input is replaced by the init latent noised to level t with the run's noise (which is CompVis' blending
  after every step at the next level), and the previews show the init latent there;
- `k_denoiser`: `(x, sigma) -> x0` in k-diffusion's space x / sqrt(a_t) (the k-samplers), k-diffusion's
  `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser` around the guided model. The kept region of every input is
  the init latent noised to sigma, and of every clean estimate the init latent.
So no sampler sees the mask; `sample()` sets the kept region of the result to the init latent exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from imaginairy.errors import GenerationCancelled

# model_fn(x [B, ...], t [B], context [k*B, ...], **unet_inputs) -> output [k*B, ...]: the latents are shared by k
# stacked context groups; `unet_inputs` are the extra UNet inputs by keyword (see `Conditioning`, `sample`).
ModelFunction = Callable[..., torch.Tensor]
GuidedModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressCallback = Callable[[int, "int | None", torch.Tensor], "bool | None"]
StepCallback = Callable[[dict], None]  # k-diffusion's callback form: {"i": step index from 0, "denoised": x0, ...}


@dataclass(frozen=True)
class Conditioning:
    """One side of classifier-free guidance: the text context [B, tokens, dim] and the further UNet inputs that
    differ between the sides (e.g. SDXL's added embeddings `y` [B, adm]), each batched like the context. Inputs the
    same for both sides (the 9-channel inpainting channels, a ControlNet hint) go to `sample(unet_inputs=...)`."""

    context: torch.Tensor
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def of(value: Conditioning | torch.Tensor) -> Conditioning:
        return value if isinstance(value, Conditioning) else Conditioning(value)

    @staticmethod
    def stacked(first: Conditioning, second: Conditioning) -> Conditioning:
        """The two sides as one batch, `first` then `second`, input by input."""
        if set(first.extra) != set(second.extra):
            raise ValueError(
                f"Both sides need the same UNet inputs; got {sorted(first.extra)} and {sorted(second.extra)}."
            )
        extra = {name: torch.cat([first.extra[name], second.extra[name]]) for name in first.extra}
        return Conditioning(torch.cat([first.context, second.context]), extra)


def guided_model_fn(
    model_fn: ModelFunction,
    cond: Conditioning | torch.Tensor,
    uncond: Conditioning | torch.Tensor,
    guidance_scale: float,
    unet_inputs: Mapping[str, torch.Tensor] | None = None,
) -> GuidedModel:
    """`(x, t) -> guided model output`, with classifier-free guidance done in one batched call.

    The conditioning batch is `[uncond, cond]`, the order diffusers uses; the latents go in once, shared by both (the
    UNet widens them to the context batch where they first differ). The output is
    `uncond + guidance_scale * (cond - uncond)`. A scale of 1 is the conditional output alone, so the unconditional
    half is not computed. `unet_inputs` go to every call unchanged.
    """
    cond, uncond, shared = Conditioning.of(cond), Conditioning.of(uncond), dict(unet_inputs or {})
    if guidance_scale == 1:
        return lambda x, t: model_fn(x, t, cond.context, **shared, **cond.extra)
    both = Conditioning.stacked(uncond, cond)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_uncond, out_cond = model_fn(x, t, both.context, **shared, **both.extra).chunk(2)
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

    def blend(self, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return self.mask * x + (1 - self.mask) * kept


class StepReporter:
    """Progress and cancellation for one sampling run.

    `before_model_call()` raises `GenerationCancelled` once `cancel_event` is set; `step_done(info)` (k-diffusion's
    callback form) passes the step on to the user's callback, counting from 1, with the clean estimate (its kept
    region set to the init latent when `kept` is given), and raises `GenerationCancelled` when the callback answers
    True.
    """

    def __init__(
        self,
        callback: ProgressCallback | None,
        cancel_event: threading.Event | None,
        total: int | None,
        kept: KeptRegion | None = None,
    ):
        self.callback = callback
        self.cancel_event = cancel_event
        self.total = total
        self.kept = kept

    def before_model_call(self) -> None:
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise GenerationCancelled("Generation cancelled: the cancel event was set.")

    def step_done(self, info: dict) -> None:
        if self.callback is None:
            return
        denoised = info["denoised"] if self.kept is None else self.kept.blend(info["denoised"], self.kept.init_latent)
        if self.callback(info["i"] + 1, self.total, denoised):
            raise GenerationCancelled("Generation cancelled: the progress callback asked to stop.")


class Estimate(NamedTuple):
    """What the model says at one whole timestep: the input it saw, its noise and clean-latent estimates."""

    x: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor


DDPMEstimator = Callable[[torch.Tensor, int], Estimate]
KDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddpm_estimator(
    model: GuidedModel,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    kept: KeptRegion | None,
    reporter: StepReporter,
) -> DDPMEstimator:
    """The wrapped model for samplers over the model's own noisy latents x_t at whole timesteps t: the estimates
    are those at the blended input (the input they return)."""

    def estimate(x: torch.Tensor, t: int) -> Estimate:
        alpha = float(alphas_cumprod[t])
        reporter.before_model_call()
        if kept is not None:
            x = kept.blend(x, noised(kept.init_latent, kept.noise, alpha))
        eps, x0 = eps_and_x0(model(x, timestep_batch(t, x)), x, alpha, prediction_type)
        return Estimate(x, eps, x0)

    return estimate


def k_denoiser(denoiser, kept: KeptRegion | None, reporter: StepReporter) -> KDenoiser:
    """The wrapped model for the k-samplers: `denoiser` is k-diffusion's discrete denoiser around the guided model.

    For a 0/1 mask blending every input and clean estimate is the same as blending after every step, and the
    deterministic samplers then keep that region exactly on the noised-init path."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        reporter.before_model_call()
        if kept is None:
            return denoiser(x, sigma)
        x = kept.blend(x, kept.init_latent + kept.noise * sigma[:, None, None, None])
        return kept.blend(denoiser(x, sigma), kept.init_latent)

    return denoise


def noised(x0: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """x_t for a clean latent `x0` and unit `noise` at the level with cumulative alpha `alpha` (q_sample)."""
    return alpha**0.5 * x0 + (1 - alpha) ** 0.5 * noise


def eps_and_x0(output: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str):
    """The noise and clean-latent estimates in a raw model output (epsilon or v)."""
    if prediction_type == "v_prediction":
        return alpha**0.5 * output + (1 - alpha) ** 0.5 * x, alpha**0.5 * x - (1 - alpha) ** 0.5 * output
    return output, (x - (1 - alpha) ** 0.5 * output) / alpha**0.5


def timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def cpu_noise(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Unit Gaussian noise drawn from the CPU `generator` and moved to `like`'s device, so a seed gives the same
    numbers on every device."""
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
