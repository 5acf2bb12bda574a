"""ControlNets applied to the UNet: each with its hint, strength and window of the schedule, as one UNet input.

diffusers' conventions (StableDiffusionControlNetPipeline, MultiControlNetModel), which ours match:
- every residual of a ControlNet is multiplied by its strength (`controlnet_conditioning_scale`); the residuals of
  several ControlNets are summed;
- a ControlNet acts at step i of n (from 0) when `start <= i / n` and `(i + 1) / n <= end`
  (`control_guidance_start` / `control_guidance_end`); outside its window its residuals are zero, so it is not run;
- with classifier-free guidance both halves of the batch get the hint and the residuals of their own text context
  (diffusers' `guess_mode=False`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from imaginairy.errors import InvalidInputError
from imaginairy.modules.controlnet import ControlNet
from imaginairy.samplers.base import StepDependent


@dataclass(frozen=True)
class Control:
    """One ControlNet at work: `hint` [1, 3, H, W] in [0, 1] at pixel size, in the network's dtype and device."""

    controlnet: ControlNet
    hint: torch.Tensor
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def active_at(self, step: int, total: int | None) -> bool:
        if total is None:  # the sampler picks its own steps: only a whole-run window is defined
            if (self.start, self.end) != (0.0, 1.0):
                raise InvalidInputError("A control start/end window needs a sampler with a fixed number of steps.")
            return True
        return self.start <= step / total and (step + 1) / total <= self.end


@dataclass(frozen=True)
class ActiveControls:
    """The controls acting at one step; `residuals(x, t, context)` is what the UNet adds to its skips and middle."""

    controls: tuple[Control, ...]

    def residuals(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        total = None
        for control in self.controls:
            residuals = [r * control.strength for r in control.controlnet(x, t, context, control.hint)]
            total = residuals if total is None else [a + b for a, b in zip(total, residuals)]
        return total


class ControlStack(StepDependent):
    """The prompt's ControlNets as a shared UNet input (`unet_inputs["control"]`): at each step, the ones whose
    window holds it (None when none does, so the UNet runs alone)."""

    def __init__(self, controls: Sequence[Control]):
        self.controls = tuple(controls)

    def at(self, step: int, total: int | None) -> ActiveControls | None:
        active = tuple(control for control in self.controls if control.active_at(step, total))
        return ActiveControls(active) if active else None
