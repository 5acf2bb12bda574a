"""The one table of samplers and sigma schedules: our names, the AUTOMATIC1111 web UI's display names, and the
aliases accepted wherever a sampler is taken (`ImaginePrompt`, the CLI, the servers). No torch here: the CLI reads
it at start-up.

A1111 names a sampler together with its sigma schedule ("DPM++ 2M Karras" is DPM++ 2M on Karras sigmas); its
newer versions show the schedule as a separate "Schedule type". `resolve_sampler_name` turns either form into
(our sampler name, schedule or None), None meaning "the schedule the prompt says".
"""

from __future__ import annotations

from dataclasses import dataclass

# The sigma schedules of the k-samplers (DDIM and PLMS take their own evenly spaced whole timesteps):
# "uniform": the model's own discrete schedule at timesteps evenly spaced from the last to the first (k-diffusion's
#   `get_sigmas`, A1111's "Uniform"), the default; "karras": Karras et al. (2022) rho-7 spacing between the model's
#   sigma_min and sigma_max; "exponential": evenly spaced in log sigma between them; "simple": the model's sigmas at
#   evenly spaced whole training timesteps (A1111's and ComfyUI's "Simple").
SCHEDULES = ("uniform", "karras", "exponential", "simple")
DEFAULT_SCHEDULE = "uniform"
# What a model's UNet predicts: the noise (SD 1.x, SD 2 base) or v (SD 2 768-v).
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class Sampler:
    name: str  # ours, as in ImaginePrompt.sampler_type
    display_name: str  # the AUTOMATIC1111 web UI's name, written into the infotext
    family: str  # "ddpm": DDIM/PLMS over whole timesteps; "k": k-diffusion over sigmas; "k_range": sigma range
    stochastic: bool = False  # draws fresh noise at every step (from the run's generator) with its default options


SAMPLERS = (
    Sampler("plms", "PLMS", "ddpm"),
    Sampler("ddim", "DDIM", "ddpm"),
    Sampler("k_lms", "LMS", "k"),
    Sampler("k_euler", "Euler", "k"),
    Sampler("k_euler_a", "Euler a", "k", stochastic=True),
    Sampler("k_heun", "Heun", "k"),
    Sampler("k_dpm_2", "DPM2", "k"),
    Sampler("k_dpm_2_a", "DPM2 a", "k", stochastic=True),
    Sampler("k_dpmpp_2m", "DPM++ 2M", "k"),
    Sampler("k_dpmpp_2s_a", "DPM++ 2S a", "k", stochastic=True),
    Sampler("k_dpmpp_sde", "DPM++ SDE", "k", stochastic=True),
    Sampler("k_dpm_fast", "DPM fast", "k_range"),
    Sampler("k_dpm_adaptive", "DPM adaptive", "k_range"),
    Sampler("k_dpmpp_2m_sde", "DPM++ 2M SDE", "k", stochastic=True),
    Sampler("k_dpmpp_3m_sde", "DPM++ 3M SDE", "k", stochastic=True),
)
SAMPLER_TYPES = tuple(sampler.name for sampler in SAMPLERS)
SELF_STEPPING_SAMPLERS = ("k_dpm_adaptive",)  # choose their own step count: `steps` does not apply to them
SAMPLERS_BY_NAME = {sampler.name: sampler for sampler in SAMPLERS}
A1111_SAMPLER_NAMES = {sampler.name: sampler.display_name for sampler in SAMPLERS}
# A1111's "Schedule type" names, and the suffixes of its combined names ("DPM++ 2M Karras").
A1111_SCHEDULE_NAMES = {"uniform": "Uniform", "karras": "Karras", "exponential": "Exponential", "simple": "Simple"}
A1111_SCHEDULE_SUFFIXES = {"karras": "Karras", "exponential": "Exponential"}


def _aliases() -> dict[str, tuple[str, str | None]]:
    """Lower-cased alias -> (sampler name, schedule or None)."""
    aliases: dict[str, tuple[str, str | None]] = {}
    for sampler in SAMPLERS:
        aliases[sampler.name] = (sampler.name, None)
        aliases[sampler.display_name.lower()] = (sampler.name, None)
        if sampler.family == "k":
            for schedule, suffix in A1111_SCHEDULE_SUFFIXES.items():
                aliases[f"{sampler.display_name} {suffix}".lower()] = (sampler.name, schedule)
    return aliases


SAMPLER_ALIASES = _aliases()


def resolve_sampler_name(name: str) -> tuple[str, str | None] | None:
    """(our sampler name, schedule or None) for one of our names or an A1111 display name (any case, surrounding
    spaces ignored); None when it names no sampler."""
    if not isinstance(name, str):
        return None
    return SAMPLER_ALIASES.get(" ".join(name.split()).lower())


def resolve_schedule_name(name: str) -> str | None:
    """Our schedule name for one of SCHEDULES in any case (A1111 shows "Karras", "Uniform"); else None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    return key if key in SCHEDULES else None
