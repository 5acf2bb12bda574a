"""The environment, read once at the edge (`imagine()`, the servers, the CLI) into a `Settings` object that is
passed down; the modules below take its values as explicit arguments.

| variable | setting | default |
|---|---|---|
| `IMAGINAIRY_DEVICE` | `device`: where the networks run (cpu, cuda, cuda:1, mps) | the best accelerator present |
| `IMAGINAIRY_SAFETY_MODE` | `safety_mode`: off, classify, filter (for prompts that set none) | classify |
| `IMAGINAIRY_SAFETY_CHECKER_MODEL` | `safety_checker_model`: a local copy of the safety checker's repo | the hub |
| `IMAGINAIRY_BLIP_MODEL` | `blip_model`: a local copy of the BLIP caption model's repo | the hub |
| `IMAGINAIRY_CLIPSEG_MODEL` | `clipseg_model`: CLIPSeg folder or hub repo id (mask prompts) | (below) |
| `IMAGINAIRY_MODELS_DIR` | `models_dir`: the models folder (checkpoints/, loras/, embeddings/, vae/) | none |

The CLIPSeg default is the refined model, `CIDAS/clipseg-rd64-refined`. The weights cache (`HF_HOME`,
`HF_HUB_CACHE`, `IMAGINAIRY_CACHE_DIR`, ...) is read by `imaginairy.models.weights`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DEVICE_ENV = "IMAGINAIRY_DEVICE"
SAFETY_MODE_ENV = "IMAGINAIRY_SAFETY_MODE"
SAFETY_CHECKER_ENV = "IMAGINAIRY_SAFETY_CHECKER_MODEL"
BLIP_MODEL_ENV = "IMAGINAIRY_BLIP_MODEL"
CLIPSEG_MODEL_ENV = "IMAGINAIRY_CLIPSEG_MODEL"
MODELS_DIR_ENV = "IMAGINAIRY_MODELS_DIR"
DEFAULT_SAFETY_MODE = "classify"
DEFAULT_CLIPSEG_LOCATION = "CIDAS/clipseg-rd64-refined"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the environment says, as plain values (None: not set). `safety_mode` is validated where it is used
    (`imaginairy.enhancers.safety.resolve_safety_mode`), so a bad value names the variable it came from."""

    device: str | None = None
    safety_mode: str | None = None
    safety_checker_model: str | None = None
    blip_model: str | None = None
    clipseg_model: str = DEFAULT_CLIPSEG_LOCATION
    models_dir: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        return cls(
            device=environ.get(DEVICE_ENV) or None,
            safety_mode=environ.get(SAFETY_MODE_ENV) or None,
            safety_checker_model=environ.get(SAFETY_CHECKER_ENV),
            blip_model=environ.get(BLIP_MODEL_ENV),
            clipseg_model=environ.get(CLIPSEG_MODEL_ENV) or DEFAULT_CLIPSEG_LOCATION,
            models_dir=environ.get(MODELS_DIR_ENV) or None,
        )
