"""The engines file: which engine ids the server answers, and the model behind each."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from imaginairy.errors import InvalidInputError
from imaginairy.models.registry import CONFIGS_DIR, registered_models
from imaginairy.schema import ImaginePrompt

DEFAULT_ENGINES_FILE = CONFIGS_DIR / "engines.yaml"
ENGINE_KEYS = {"model", "model_config", "name", "description", "defaults"}
# What a request itself decides; an engine's `defaults` cannot set these.
REQUEST_ONLY_FIELDS = {"prompt", "negative_prompt", "init_image", "seed", "model", "model_config"}


@dataclasses.dataclass(frozen=True)
class Engine:
    """One engine id and the model (registry name or weights path) that serves it."""

    id: str
    model: str
    model_config: str | None = None
    name: str = ""
    description: str = ""
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_engines(path: str | os.PathLike | None = None) -> dict[str, Engine]:
    """The engines of a YAML file (default: the one shipped in `imaginairy/configs/`), by engine id."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path or DEFAULT_ENGINES_FILE).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"Engines file not found: {path} (give the path of an engines .yaml file).")
    try:
        entries = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError, OSError) as e:
        raise InvalidInputError(f"Cannot read engines file {path}: {e}") from e
    if not isinstance(entries, dict) or not entries:
        raise InvalidInputError(f"Engines file {path} must map engine ids to settings, e.g. `my-engine: {{model: "
                                "sd-1.5}`.")
    return {str(engine_id): parse_engine(str(engine_id), entry, path.parent) for engine_id, entry in entries.items()}


def parse_engine(engine_id: str, entry: Any, base_dir: Path) -> Engine:
    if not isinstance(entry, dict) or "model" not in entry:
        raise InvalidInputError(f"Engine {engine_id!r} needs a `model:` (a model name or a weights file path).")
    unknown = set(entry) - ENGINE_KEYS
    if unknown:
        raise InvalidInputError(f"Engine {engine_id!r} has unknown keys {sorted(unknown)}; "
                                f"allowed: {sorted(ENGINE_KEYS)}.")
    model_config = entry.get("model_config")
    return Engine(
        id=engine_id,
        model=model_location(str(entry["model"]), base_dir),
        model_config=str(base_dir / model_config) if model_config else None,
        name=str(entry.get("name") or engine_id),
        description=str(entry.get("description") or ""),
        defaults=checked_defaults(engine_id, entry.get("defaults") or {}),
    )


def model_location(model: str, base_dir: Path) -> str:
    """A registry name as it is; a relative weights path made relative to the engines file."""
    if model in registered_models() or model.startswith(("hf://", "http://", "https://")):
        return model
    return str(base_dir / Path(model).expanduser())


def checked_defaults(engine_id: str, defaults: Any) -> dict[str, Any]:
    allowed = {field.name for field in dataclasses.fields(ImaginePrompt)} - REQUEST_ONLY_FIELDS
    if not isinstance(defaults, dict) or set(defaults) - allowed:
        raise InvalidInputError(f"Engine {engine_id!r} defaults may only set: {', '.join(sorted(allowed))}.")
    ImaginePrompt("check", **defaults)
    return dict(defaults)


def describe_model(engine: Engine) -> str:
    if engine.description:
        return engine.description
    spec = registered_models().get(engine.model)
    # the file's name only: server-side paths are not shown to clients
    return spec.description if spec else f"weights file {Path(engine.model).name}"
