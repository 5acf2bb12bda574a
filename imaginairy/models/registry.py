"""Named models and model files: which weights, which architecture config.

A model is named either by a registry name from `configs/models.yaml` (`sd-1.5`, `sd-2.1-v`, ...) or by the path of a
weights file. For a file the architecture config is, in order: the one given explicitly, a CompVis-style yaml beside
the weights with the same stem (`model.safetensors` + `model.yaml`), or inferred from the weights when they are loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaginairy.errors import InvalidInputError, ModelNotFoundError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
WEIGHTS_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights are and which architecture config describes them (None: infer from the weights)."""

    name: str
    weights: str
    config_path: Path | None
    description: str = ""
    # Per-model values of modules.diffusion.DiffusionSettings that override the architecture config's
    # (default_size, timestep_spacing): a Turbo model shares its architecture yaml with the model it was distilled from.
    settings: tuple[tuple[str, Any], ...] = ()
    # Per-model defaults of ImaginePrompt fields (steps, prompt_strength, sampler_type) that a prompt leaves unset:
    # the few-step Turbo models are sampled with 1 step, no guidance and Euler ancestral.
    prompt_defaults: tuple[tuple[str, Any], ...] = ()


@functools.lru_cache(maxsize=1)
def registered_models() -> dict[str, ModelSpec]:
    from omegaconf import OmegaConf

    entries = OmegaConf.to_container(OmegaConf.load(CONFIGS_DIR / "models.yaml"))
    return {
        name: ModelSpec(
            name=name,
            weights=entry["weights"],
            config_path=CONFIGS_DIR / entry["config"],
            description=entry.get("description", ""),
            settings=tuple(entry.get("settings", {}).items()),
            prompt_defaults=tuple(entry.get("prompt_defaults", {}).items()),
        )
        for name, entry in entries.items()
    }


def model_prompt_defaults(model: str | None) -> dict[str, Any]:
    """The registry's prompt defaults for a registered model name (nothing for files, URLs and None)."""
    spec = registered_models().get(model) if model is not None else None
    return dict(spec.prompt_defaults) if spec is not None else {}


def resolve_model(model: str, model_config: str | os.PathLike | None = None) -> ModelSpec:
    """Turn what the user named (`--model`, `--model-config`) into a ModelSpec, without loading anything."""
    config_path = _existing_config(model_config) if model_config is not None else None
    models = registered_models()
    if model in models:
        spec = models[model]
        if config_path is None:
            return spec
        return dataclasses.replace(spec, config_path=config_path)
    if model.startswith(("hf://", "https://", "http://")):
        return ModelSpec(name=_stem(model), weights=model, config_path=config_path)
    path = Path(model).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():  # a diffusers-format folder
        return ModelSpec(name=path.name, weights=str(path), config_path=config_path)
    if path.is_file():
        sidecar = path.with_suffix(".yaml")
        if config_path is None and sidecar.is_file():
            config_path = sidecar
        return ModelSpec(name=path.stem, weights=str(path), config_path=config_path)
    if path.is_dir():
        raise ModelNotFoundError(
            f"--model {model} is a folder, not a weights file: give the .safetensors or .ckpt file"
        )
    if path.exists():
        raise ModelNotFoundError(f"--model {model} is not a regular file: give a .safetensors or .ckpt file")
    if path.suffix in WEIGHTS_SUFFIXES or os.sep in model:
        raise ModelNotFoundError(f"model file not found: {model} (check the path, or use one of: {', '.join(models)})")
    raise ModelNotFoundError(
        f"unknown model {model!r}: use one of {', '.join(models)}, or the path of a .safetensors/.ckpt file"
    )


def _existing_config(model_config: str | os.PathLike) -> Path:
    path = Path(model_config).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"model config not found: {model_config} (give the path of a CompVis-style .yaml)")
    return path


def _stem(location: str) -> str:
    return Path(location.rstrip("/").rsplit("/", 1)[-1]).stem
