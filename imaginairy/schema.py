"""The user-facing data: what to generate (`ImaginePrompt`) and what came out (`ImagineResult`).

The CLI imports this module at start-up, so it imports no heavy library (PIL, numpy, torch) at the top:
those are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import secrets
from typing import TYPE_CHECKING, Any, Union

from imaginairy.errors import EmbeddingError, InvalidInputError
from imaginairy.models.registry import model_prompt_defaults
from imaginairy.modules.tile_modes import TILE_MODES
from imaginairy.prompts.syntax import PROMPT_SYNTAXES
from imaginairy.samplers.table import (
    DEFAULT_SCHEDULE,
    SAMPLER_TYPES,
    SAMPLERS_BY_NAME,
    SCHEDULES,
    resolve_sampler_name,
    resolve_schedule_name,
)
from imaginairy.utils.images import LazyLoadingImage

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

logger = logging.getLogger(__name__)

MASK_MODES = ("replace", "keep")
DEFAULT_MODEL = "sd-1.5"
# Fields whose default depends on the model: a registry entry's `prompt_defaults` (the Turbo models': 1 step, no
# guidance, Euler ancestral) come first, these otherwise. A value the user gives always wins.
MODEL_DEPENDENT_DEFAULTS = {"steps": 40, "prompt_strength": 7.5, "sampler_type": "k_dpmpp_2m"}
DEFAULT_EDIT_MODEL = "sd-1.5-inpainting"  # the model when none is named and a mask or an outpaint spec is given
# "auto": bf16 where the hardware computes it natively, else full (float32); resolved when the model is loaded.
PRECISIONS = ("auto", "full", "autocast", "bf16", "fp16")
# high: everything stays on the device; mid: also precision "auto" is half precision on a GPU; low: also only the
# running submodel (text encoder, UNet or VAE) on the device (imaginairy.models.runtime).
MEMORY_MODES = ("high", "mid", "low")
SAFETY_MODES = ("off", "classify", "filter")
# Kinds of image in an ImagineResult that can be its final image, the later processing steps first.
FINAL_IMAGE_KINDS = ("modified_original", "upscaled", "face_fixed", "generated")

MAX_LORA_WEIGHT = 10.0  # |weight| of a LoRA; A1111's UI slider stops at 2, files are trained for about 1
SEED_LIMIT = 2**64
RANDOM_SEED_LIMIT = 2**32
MAX_STEPS = 1000
MAX_PROMPT_STRENGTH = 100.0
MIN_SIDE = 64
MAX_SIDE = 4096
SIZE_MULTIPLE = 8
MAX_CLIP_SKIP = 12  # the layers of SD 1.x's CLIP ViT-L text encoder (A1111's slider goes as far)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class WeightedPrompt:
    """A piece of prompt text and how strongly it steers the image.

    A negative weight makes the text a negative prompt (steers away from it); a weight of 0 is not allowed.
    """

    text: str
    weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise InvalidInputError(f"Prompt text must be a string, got {self.text!r}.")
        if not _is_real(self.weight) or not math.isfinite(self.weight) or self.weight == 0:
            raise InvalidInputError(
                f"Prompt weight must be a non-zero finite number, got {self.weight!r} for prompt {self.text!r}."
            )

    def as_dict(self) -> dict:
        return {"text": self.text, "weight": float(self.weight)}


PromptInput = Union[str, WeightedPrompt, list, tuple, None]


@dataclasses.dataclass(frozen=True)
class LoRA:
    """A LoRA (or LyCORIS) file merged into the model for one prompt: a file path, or a name in the models folder's
    `loras/` (see imaginairy.models.library), and how strongly it applies (-10..10; 1 = as trained)."""

    path_or_name: str
    weight: float = 1.0

    def __post_init__(self):
        path_or_name = os.fspath(self.path_or_name) if isinstance(self.path_or_name, os.PathLike) else self.path_or_name
        if not isinstance(path_or_name, str) or not path_or_name.strip():
            raise InvalidInputError(f"A LoRA is named by a file path or a name, got {self.path_or_name!r}.")
        object.__setattr__(self, "path_or_name", path_or_name.strip())
        if not _is_real(self.weight) or not -MAX_LORA_WEIGHT <= self.weight <= MAX_LORA_WEIGHT:
            raise InvalidInputError(
                f"LoRA weight must be a number from -{MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}, got {self.weight!r}"
                f" for {path_or_name!r}."
            )

    def as_dict(self) -> dict:
        return {"path_or_name": self.path_or_name, "weight": float(self.weight)}


@dataclasses.dataclass(frozen=True)
class ControlInput:
    """One ControlNet for a prompt (imaginairy.control). `mode` is one of `CONTROL_MODES` (it picks the public
    checkpoint and the preprocessor); `image` the control image (a path, URL, PIL image or LazyLoadingImage; None:
    the prompt's init image); `strength` multiplies the ControlNet's residuals; it acts in the steps between the
    fractions `start` and `end` of the run. `preprocess=False` takes the image as the ready hint. `model` is an
    explicit ControlNet weights file or diffusers folder instead of the mode's checkpoint. `canny_thresholds` are
    the low and high hysteresis thresholds of the canny preprocessor."""

    mode: str
    image: Any = None
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocess: bool = True
    model: str | None = None
    canny_thresholds: tuple = (100, 200)

    def __post_init__(self):
        from imaginairy.control.modes import CONTROL_MODES, UNSUPPORTED_MODES

        if self.mode in UNSUPPORTED_MODES:
            raise InvalidInputError(f"Control mode {self.mode!r} is not supported: {UNSUPPORTED_MODES[self.mode]}.")
        mode = _check_choice(self.mode, "control mode", tuple(CONTROL_MODES))
        object.__setattr__(self, "image", _as_lazy_image(self.image, "control image"))
        if not _is_real(self.strength) or not 0 <= self.strength <= 10:
            raise InvalidInputError(f"control strength must be a number from 0 to 10, got {self.strength!r}.")
        start, end = (_check_unit_interval(v, f"control {n}") for v, n in ((self.start, "start"), (self.end, "end")))
        if start >= end:
            raise InvalidInputError(f"control start {start} must be below control end {end}.")
        object.__setattr__(self, "preprocess", _check_flag(self.preprocess, "control preprocess"))
        if self.preprocess and CONTROL_MODES[mode].preprocessor is None:
            from imaginairy.control.preprocess import ready_hint_advice

            raise InvalidInputError(f"Control mode {mode!r} has no preprocessor yet: {ready_hint_advice(mode)}.")
        thresholds = tuple(self.canny_thresholds)
        in_range = len(thresholds) == 2 and all(_is_int(v) and 0 <= v <= 255 for v in thresholds)
        if not in_range or thresholds[0] > thresholds[1]:
            raise InvalidInputError(f"canny thresholds must be two whole numbers 0-255, low <= high; got {thresholds}.")
        if self.model is not None:
            _check_control_model(self.model, mode)
        object.__setattr__(self, "canny_thresholds", thresholds)
        object.__setattr__(self, "mode", mode)

    def to_metadata(self) -> dict[str, Any]:
        return {"mode": self.mode, "image": self.image.source if self.image is not None else None,
                "strength": self.strength, "start": self.start, "end": self.end, "preprocess": self.preprocess,
                "model": self.model, "canny_thresholds": list(self.canny_thresholds)}


def _check_control_model(model: Any, mode: str) -> None:
    """The file name of an explicit ControlNet checkpoint names its mode (control_v11p_sd15_canny...): refuse one
    that names another mode."""
    import re

    from imaginairy.control.modes import CONTROL_MODES, UNSUPPORTED_MODES

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise InvalidInputError(f"control model must be a weights path or location, got {model!r}.")
    words = set(re.split(r"[^a-z0-9]+", os.path.basename(str(model)).lower()))
    named = [name for name in (*CONTROL_MODES, *UNSUPPORTED_MODES) if name in words]
    if named and mode not in named:
        raise InvalidInputError(
            f"control model {os.path.basename(str(model))} is a {named[0]} ControlNet but the mode is {mode!r}:"
            f" use --control-mode {named[0]} or a {mode} ControlNet."
        )


@dataclasses.dataclass
class ImaginePrompt:
    """Everything that decides one generated image. Defaults are defined here and nowhere else.

    After construction, `prompt` and `negative_prompt` are lists of `WeightedPrompt` with positive weights
    (prompt texts given a negative weight are moved to `negative_prompt`); each list holds at least one entry,
    `WeightedPrompt("")` meaning "unconditional". `init_image` is a `LazyLoadingImage` or None, `seed` an int.
    """

    prompt: PromptInput = None
    negative_prompt: PromptInput = None
    prompt_strength: float | None = None  # None: the model's default (registry), else MODEL_DEPENDENT_DEFAULTS
    init_image: Any = None
    init_image_strength: float = 0.2
    # inpainting / outpainting (imaginairy.masking.inpaint)
    mask_prompt: str | None = None
    mask_image: Any = None
    mask_mode: str = "replace"
    mask_modify_original: bool = True
    outpaint: str | None = None
    seamless_boost: float = 0.0
    seed: int | None = None
    steps: int | None = None  # None: the model's default, as prompt_strength
    width: int | None = None
    height: int | None = None
    sampler_type: str | None = None  # None: the model's default, as prompt_strength
    schedule: str = DEFAULT_SCHEDULE
    ddim_eta: float = 0.0
    tile_mode: str = ""
    model: str | None = None
    model_config: str | None = None
    # LoRAs besides the <lora:NAME:WEIGHT> tags in the prompt texts (which are taken out of the texts and added here)
    loras: Any = ()
    vae: str | None = None  # a VAE file (path or name in the models folder) replacing the checkpoint's
    precision: str = "auto"
    memory_mode: str = "high"
    fix_faces: bool = False
    fix_faces_fidelity: float = 0.2
    upscale: bool = False
    caption: bool = False
    safety_mode: str | None = None
    # text conditioning (imaginairy.prompts)
    prompt_syntax: str = "a1111"
    clip_skip: int = 1
    embeddings: Any = ()  # textual-inversion files or folders; an embedding is used where its name is in a prompt
    control_inputs: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        named_model = self.model if isinstance(self.model, str) else None  # None: chosen by _check_edit_inputs
        model_defaults = {**MODEL_DEPENDENT_DEFAULTS, **model_prompt_defaults(named_model)}
        for name, default in model_defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        loras = _check_loras(self.loras)
        positive_given, loras_in_prompt = _without_lora_tags(_weighted_prompts(self.prompt, "prompt"))
        negative_given = _weighted_prompts(self.negative_prompt, "negative_prompt")
        negative_given, loras_in_negative = _without_lora_tags(negative_given)
        self.loras = (*loras, *loras_in_prompt, *loras_in_negative)
        positive, negative_from_prompt = _split_by_sign(positive_given)
        if any(wp.weight < 0 for wp in negative_given):
            raise InvalidInputError(
                "negative_prompt weights must be positive (they already steer away from the text); "
                f"got {[wp.weight for wp in negative_given]}."
            )
        self.prompt = _non_empty(positive)
        self.negative_prompt = _non_empty(negative_given + negative_from_prompt)
        self.prompt_strength = _check_prompt_strength(self.prompt_strength)
        self.init_image = _as_lazy_image(self.init_image)
        self.init_image_strength = _check_unit_interval(self.init_image_strength, "init_image_strength")
        self.mask_prompt = _check_mask_prompt(self.mask_prompt)
        self.mask_image = _as_lazy_image(self.mask_image, "mask_image")
        self.mask_mode = _check_choice(self.mask_mode, "mask_mode", MASK_MODES)
        self.mask_modify_original = _check_flag(self.mask_modify_original, "mask_modify_original")
        self.outpaint = _check_outpaint(self.outpaint)
        self.seamless_boost = _check_unit_interval(self.seamless_boost, "seamless_boost")
        _check_edit_inputs(self)
        self.seed = _check_seed(self.seed)
        self.steps = _check_steps(self.steps)
        self.width = _check_side(self.width, "width")
        self.height = _check_side(self.height, "height")
        self.sampler_type, self.schedule = _check_sampler(self.sampler_type, self.schedule)
        self.ddim_eta = _check_ddim_eta(self.ddim_eta)
        self.tile_mode = _check_choice(self.tile_mode, "tile_mode", TILE_MODES)
        self.model = _check_model(self.model)
        self.model_config = _check_model_config(self.model_config)
        self.vae = _check_vae(self.vae)
        self.precision = _check_choice(self.precision, "precision", PRECISIONS)
        self.memory_mode = _check_choice(self.memory_mode, "memory_mode", MEMORY_MODES)
        self.fix_faces = _check_flag(self.fix_faces, "fix_faces")
        self.fix_faces_fidelity = _check_unit_interval(self.fix_faces_fidelity, "fix_faces_fidelity")
        self.upscale = _check_flag(self.upscale, "upscale")
        self.caption = _check_flag(self.caption, "caption")
        if self.safety_mode is not None:
            self.safety_mode = _check_choice(self.safety_mode, "safety_mode", SAFETY_MODES)
        self.prompt_syntax = _check_choice(self.prompt_syntax, "prompt_syntax", PROMPT_SYNTAXES)
        self.clip_skip = _check_clip_skip(self.clip_skip)
        self.embeddings = _check_embedding_paths(self.embeddings)
        self.control_inputs = _check_control_inputs(self)

    @property
    def prompts(self) -> list[WeightedPrompt]:
        """The positive prompts (weights > 0); `[WeightedPrompt("")]` when there is none."""
        return self.prompt

    @property
    def negative_prompts(self) -> list[WeightedPrompt]:
        """The negative prompts with positive weights; `[WeightedPrompt("")]` when there is none."""
        return self.negative_prompt

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default value of every field, by field name (what the CLI shows and uses); for the fields of
        MODEL_DEPENDENT_DEFAULTS, the value used when the model has no default of its own."""
        return {
            field.name: field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
            for field in dataclasses.fields(cls)
        } | MODEL_DEPENDENT_DEFAULTS

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ImaginePrompt:
        """The prompt described by `to_metadata()` output or a saved file's metadata (other keys are ignored)."""
        field_names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in metadata.items() if name in field_names})

    def to_metadata(self) -> dict[str, Any]:
        """The settings needed to reproduce this prompt, as plain JSON-compatible data."""
        return {
            "prompt": [wp.as_dict() for wp in self.prompt],
            "negative_prompt": [wp.as_dict() for wp in self.negative_prompt],
            "prompt_strength": self.prompt_strength,
            "init_image": self.init_image.source if self.init_image is not None else None,
            "init_image_strength": self.init_image_strength,
            "mask_prompt": self.mask_prompt,
            "mask_image": self.mask_image.source if self.mask_image is not None else None,
            "mask_mode": self.mask_mode,
            "mask_modify_original": self.mask_modify_original,
            "outpaint": self.outpaint,
            "seamless_boost": self.seamless_boost,
            "seed": self.seed,
            "steps": self.steps,
            "width": self.width,
            "height": self.height,
            "sampler_type": self.sampler_type,
            "schedule": self.schedule,
            "ddim_eta": self.ddim_eta,
            "tile_mode": self.tile_mode,
            "model": self.model,
            "model_config": self.model_config,
            "loras": [lora.as_dict() for lora in self.loras],
            "vae": self.vae,
            "precision": self.precision,
            "fix_faces": self.fix_faces,
            "fix_faces_fidelity": self.fix_faces_fidelity,
            "upscale": self.upscale,
            "caption": self.caption,
            "safety_mode": self.safety_mode,
            "prompt_syntax": self.prompt_syntax,
            "clip_skip": self.clip_skip,
            "embeddings": list(self.embeddings),
            "control_inputs": [control.to_metadata() for control in self.control_inputs],
        }


def _weighted_prompts(value: PromptInput, field: str) -> list[WeightedPrompt]:
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    prompts = []
    for item in items:
        if isinstance(item, str):
            item = WeightedPrompt(item)
        elif isinstance(item, dict):
            if not {"text"} <= item.keys() <= {"text", "weight"}:
                raise InvalidInputError(
                    f"{field} as a dict must have the keys 'text' and optionally 'weight'; "
                    f"got {sorted(map(str, item))}."
                )
            item = WeightedPrompt(**item)
        elif not isinstance(item, WeightedPrompt):
            raise InvalidInputError(
                f"{field} must be a string, a WeightedPrompt or a list of them; got {type(item).__name__} {item!r}."
            )
        prompts.append(WeightedPrompt(item.text.strip(), item.weight))
    return prompts


def _check_loras(value: Any) -> tuple[LoRA, ...]:
    """LoRAs given as LoRA objects, {"path_or_name", "weight"} dicts (metadata) or bare paths / names (weight 1)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, os.PathLike, LoRA, dict)) else value
    if not isinstance(items, (list, tuple)):
        raise InvalidInputError(f"loras must be a list of LoRA(path_or_name, weight), got {type(value).__name__}.")
    loras = []
    for item in items:
        if isinstance(item, dict):
            item = LoRA(**item)
        elif isinstance(item, (str, os.PathLike)):
            item = LoRA(item)
        elif not isinstance(item, LoRA):
            raise InvalidInputError(f"loras must hold LoRA(path_or_name, weight) items, got {item!r}.")
        loras.append(item)
    return tuple(loras)


def _without_lora_tags(prompts: list[WeightedPrompt]) -> tuple[list[WeightedPrompt], list[LoRA]]:
    from imaginairy.prompts.extra_networks import extract_lora_tags

    texts, loras = [], []
    for wp in prompts:
        text, tags = extract_lora_tags(wp.text)
        texts.append(WeightedPrompt(text.strip(), wp.weight))
        loras.extend(LoRA(name, weight) for name, weight in tags)
    return texts, loras


def _check_vae(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"vae must be the path or the name of a VAE file, got {value!r}.")
    return value


def _split_by_sign(prompts: list[WeightedPrompt]) -> tuple[list[WeightedPrompt], list[WeightedPrompt]]:
    positive = [wp for wp in prompts if wp.weight > 0]
    negative = [WeightedPrompt(wp.text, -wp.weight) for wp in prompts if wp.weight < 0]
    return positive, negative


def _non_empty(prompts: list[WeightedPrompt]) -> list[WeightedPrompt]:
    with_text = [wp for wp in prompts if wp.text]
    return with_text or [WeightedPrompt("")]


def _check_prompt_strength(value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or not 0 <= value <= MAX_PROMPT_STRENGTH:
        raise InvalidInputError(
            f"prompt_strength (CFG scale) must be a number from 0 to {MAX_PROMPT_STRENGTH:g}, got {value!r}."
        )
    return float(value)


def _check_unit_interval(value: Any, field: str) -> float:
    if not _is_real(value) or not 0 <= value <= 1:
        raise InvalidInputError(f"{field} must be a number from 0 to 1, got {value!r}.")
    return float(value)


def _check_seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(RANDOM_SEED_LIMIT)
    if not _is_int(value) or not 0 <= value < SEED_LIMIT:
        raise InvalidInputError(f"seed must be an integer from 0 to 2**64 - 1, got {value!r}.")
    return int(value)


def _check_steps(value: Any) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_STEPS:
        raise InvalidInputError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {value!r}.")
    return int(value)


def _check_side(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not MIN_SIDE <= value <= MAX_SIDE:
        raise InvalidInputError(
            f"{field} must be a whole number of pixels from {MIN_SIDE} to {MAX_SIDE}, got {value!r}."
        )
    rounded = int(value) // SIZE_MULTIPLE * SIZE_MULTIPLE
    if rounded != value:
        logger.warning("%s %d is not a multiple of %d; using %d.", field, value, SIZE_MULTIPLE, rounded)
    return rounded


def _check_choice(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        shown = ", ".join(repr(choice) for choice in allowed)
        raise InvalidInputError(f"{field} {value!r} is not supported; choose one of: {shown}.")
    return value


def _check_sampler(sampler: Any, schedule: Any) -> tuple[str, str]:
    """(sampler_type, schedule) from our names or AUTOMATIC1111's ("DPM++ 2M Karras" is k_dpmpp_2m on karras);
    a schedule named by both must agree."""
    resolved = resolve_sampler_name(sampler)
    if resolved is None:
        shown = ", ".join(repr(choice) for choice in SAMPLER_TYPES)
        raise InvalidInputError(f"sampler_type {sampler!r} is not supported; choose one of: {shown}.")
    sampler_type, named_schedule = resolved
    chosen = resolve_schedule_name(schedule)
    if chosen is None:
        shown = ", ".join(repr(choice) for choice in SCHEDULES)
        raise InvalidInputError(f"schedule {schedule!r} is not supported; choose one of: {shown}.")
    if named_schedule is not None:
        if chosen not in (DEFAULT_SCHEDULE, named_schedule):
            raise InvalidInputError(
                f"sampler_type {sampler!r} names the {named_schedule!r} schedule, but schedule is {chosen!r};"
                " give one of them."
            )
        chosen = named_schedule
    if chosen != DEFAULT_SCHEDULE and SAMPLERS_BY_NAME[sampler_type].family != "k":
        raise InvalidInputError(
            f"schedule {chosen!r} applies to the k-samplers only; {sampler_type} takes its own steps. Use schedule"
            f" {DEFAULT_SCHEDULE!r} or a k_* sampler such as k_dpmpp_2m."
        )
    return sampler_type, chosen


def _check_flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{field} must be True or False; got {value!r}.")
    return value


def _check_ddim_eta(value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"ddim_eta must be a finite number >= 0, got {value!r}.")
    return float(value)


def _check_clip_skip(value: Any) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_CLIP_SKIP:
        raise InvalidInputError(
            f"clip_skip must be a whole number from 1 (the last layer) to {MAX_CLIP_SKIP}, got {value!r}."
        )
    return int(value)


def _check_embedding_paths(value: Any) -> tuple[str, ...]:
    """Textual-inversion files or folders as a tuple of path strings; each must exist."""
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, (str, os.PathLike)) for item in items):
        raise InvalidInputError(f"embeddings must be a path or a list of paths (files or folders), got {value!r}.")
    paths = tuple(os.fspath(item) for item in items)
    for path in paths:
        if not os.path.exists(path):
            raise EmbeddingError(f"Embedding path not found: {path} (give an embedding file or a folder of them).")
    return paths


def _check_model(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"model must be a model name or a path to a weights file, got {value!r}.")
    return value


def _check_model_config(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not os.path.isfile(value):
        raise InvalidInputError(f"model_config must be the path of an existing yaml file, got {value!r}.")
    return value


def _check_mask_prompt(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"mask_prompt must be a mask expression string, got {type(value).__name__}.")
    if not value.strip():
        raise InvalidInputError('mask_prompt is empty: say what to edit, e.g. "fruit OR fruit stem" (or leave it out).')
    from imaginairy.masking.expression import parse_mask_expression

    parse_mask_expression(value)
    return value.strip()


def _check_outpaint(value: Any) -> str | None:
    if value is None:
        return None
    from imaginairy.masking.outpaint import parse_outpaint_spec

    parse_outpaint_spec(value)
    return value.strip().lower()


def _check_edit_inputs(prompt: ImaginePrompt) -> None:
    """Masks and outpainting edit an init image; a mask comes from a prompt or an image, not both. With no model
    named, the default model, or with a mask or an outpaint spec the default inpainting model."""
    edit_fields = [name for name in ("mask_prompt", "mask_image", "outpaint") if getattr(prompt, name) is not None]
    if edit_fields and prompt.init_image is None:
        raise InvalidInputError(f"{edit_fields[0]} edits an init image: give init_image too.")
    if prompt.mask_prompt is not None and prompt.mask_image is not None:
        raise InvalidInputError("Give either mask_prompt or mask_image, not both.")
    if prompt.model is None:
        prompt.model = DEFAULT_EDIT_MODEL if edit_fields else DEFAULT_MODEL


def _check_control_inputs(prompt: ImaginePrompt) -> list[ControlInput]:
    """ControlInputs (or their metadata dicts); one without an image takes the init image, which must be given."""
    controls = []
    for control in prompt.control_inputs or []:
        if isinstance(control, dict):
            control = ControlInput(**control)
        if not isinstance(control, ControlInput):
            raise InvalidInputError(f"control_inputs must be ControlInput objects, got {type(control).__name__}.")
        if control.image is None and prompt.init_image is None:
            raise InvalidInputError(f"The {control.mode} control has no image: give its image or an init_image.")
        if (control.start, control.end) != (0, 1) and prompt.sampler_type == "k_dpm_adaptive":
            raise InvalidInputError("k_dpm_adaptive picks its own steps: control start/end need another sampler.")
        controls.append(control)
    return controls


def _as_lazy_image(value: Any, field: str = "init_image") -> LazyLoadingImage | None:
    if value is None or isinstance(value, LazyLoadingImage):
        return value
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return LazyLoadingImage(url=value)
    if isinstance(value, (str, os.PathLike)):
        from imaginairy.utils.downloads import check_url_scheme

        check_url_scheme(os.fspath(value))
        return LazyLoadingImage(filepath=value)
    from PIL import Image

    if isinstance(value, Image.Image):
        return LazyLoadingImage(img=value)
    raise InvalidInputError(
        f"{field} must be a file path, an http(s) URL, a PIL image or a LazyLoadingImage; "
        f"got {type(value).__name__}."
    )


class ImagineResult:
    """The images made for one prompt, by kind ("generated" is the main one), and the settings that made them."""

    def __init__(
        self,
        images: dict[str, Image.Image],
        prompt: ImaginePrompt,
        metadata: dict[str, Any] | None = None,
    ):
        if "generated" not in images:
            raise ValueError(f"ImagineResult needs a 'generated' image; got kinds {sorted(images)}.")
        self.images = dict(images)
        self.prompt = prompt
        if metadata is None:
            from imaginairy.utils.metadata import build_metadata

            metadata = build_metadata(prompt, *self.images["generated"].size)
        self.metadata = metadata

    @property
    def img(self) -> Image.Image:
        """The final image: the first present of FINAL_IMAGE_KINDS (the generated image after every step asked for)."""
        return next(self.images[kind] for kind in FINAL_IMAGE_KINDS if kind in self.images)

    @property
    def final_kind(self) -> str:
        return next(kind for kind in FINAL_IMAGE_KINDS if kind in self.images)

    image = img

    def save(self, path: str | Path, image_type: str | None = None) -> Path:
        """Write one image to `path` (format from the extension) with the metadata embedded: the final image (`.img`)
        unless `image_type` names another kind.

        Never overwrites: an existing `path` raises `OutputWriteError`.
        """
        from imaginairy.utils.outputs import save_image

        return save_image(self, path, image_type or self.final_kind)

    def image_of_type(self, image_type: str) -> Image.Image:
        """The image of one kind ("generated", ...); InvalidInputError naming the kinds there are if absent."""
        if image_type not in self.images:
            raise InvalidInputError(f"No {image_type!r} image in this result; it has: {', '.join(self.images)}.")
        return self.images[image_type]
