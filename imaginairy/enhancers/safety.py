"""The Stable Diffusion NSFW safety checker, and the three ways to use it.

The checker (weights: the `CompVis/stable-diffusion-safety-checker` hub repo) embeds an image with a CLIP vision
tower and its projection, then compares the embedding with 17 "concept" and 3 "special care" embeddings by cosine
similarity. A concept scores `similarity - its threshold`; when any special-care concept scores above 0, every
concept threshold is lowered by 0.01. Scores are rounded to 3 decimals, and an image is flagged when any concept
score is above 0.

Safety modes (per call, else `IMAGINAIRY_SAFETY_MODE`, else `classify`):
- `off`: the checker is never loaded; results say no check ran.
- `classify`: images are checked and flagged in the result. If the weights cannot be had (offline and not
  cached) images are still returned, a warning is logged once, and the results record that no check ran.
- `filter`: as `classify`, and a flagged image is replaced by a strongly blurred copy. If the weights cannot be
  had it fails closed with SafetyCheckUnavailableError; call `ensure_safety_available` before generating.

The checker's files come from the hub cache (downloaded there if needed), or from a local copy of the repo
folder given as `model_location` or by `IMAGINAIRY_SAFETY_CHECKER_MODEL`.

This module imports no heavy library at the top: torch and transformers are imported when a check runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from imaginairy.errors import (
    InvalidInputError,
    ModelLoadError,
    SafetyCheckUnavailableError,
    WeightsUnavailableError,
    first_line,
)
from imaginairy.models.cache import in_shared_cache
from imaginairy.schema import SAFETY_MODES
from imaginairy.settings import DEFAULT_SAFETY_MODE, SAFETY_CHECKER_ENV, SAFETY_MODE_ENV, Settings

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

SAFETY_CHECKER_REPO = "CompVis/stable-diffusion-safety-checker"
CONFIG_FILES = ("config.json", "preprocessor_config.json")
CONCEPT_COUNT = 17
SPECIAL_CARE_COUNT = 3
SPECIAL_CARE_ADJUSTMENT = 0.01
SCORE_DECIMALS = 3
# blur radius as a fraction of the image's longer side: enough to leave only colour blobs
FILTER_BLUR_FRACTION = 1 / 12


@dataclasses.dataclass(frozen=True)
class SafetyResult:
    """The safety verdict on one image.

    is_nsfw: True / False when checked, None when no check ran (`checked` is False: mode `off`, or weights
    unavailable in mode `classify`). concept_scores: each concept's score (above 0 means flagged), empty when
    not checked. filtered: the image was replaced by a blurred copy (mode `filter`).
    """

    is_nsfw: bool | None
    checked: bool
    concept_scores: tuple[float, ...] = ()
    special_care: bool = False
    filtered: bool = False

    def to_metadata(self) -> dict:
        return {"is_nsfw": self.is_nsfw, "checked": self.checked, "filtered": self.filtered}


UNCHECKED = SafetyResult(is_nsfw=None, checked=False)


def resolve_safety_mode(mode: str | None = None, settings: Settings | None = None) -> str:
    """The safety mode to use: `mode` if given, else the settings' (IMAGINAIRY_SAFETY_MODE; `settings` read from
    the environment when not given), else `classify` (case-insensitive)."""
    settings = settings if settings is not None else Settings.from_environment()
    chosen = mode if mode is not None else settings.safety_mode or DEFAULT_SAFETY_MODE
    normalized = str(chosen).strip().lower()
    if normalized not in SAFETY_MODES:
        source = "safety mode" if mode is not None else SAFETY_MODE_ENV
        raise InvalidInputError(f"Unknown {source} {chosen!r}: use one of {', '.join(SAFETY_MODES)}.")
    return normalized


def ensure_safety_available(
    mode: str | None = None, *, model_location: str | os.PathLike | None = None, settings: Settings | None = None
) -> str:
    """Resolve the mode and, for `filter`, make sure the checker's files are at hand (downloading them if needed),
    without loading the model. Returns the resolved mode. Call before generating so `filter` fails before the work.

    Raises InvalidInputError for an unknown mode, SafetyCheckUnavailableError when `filter` cannot be honoured.
    """
    mode = resolve_safety_mode(mode, settings)
    if mode == "filter":
        try:
            safety_checker_dir(model_location)
        except WeightsUnavailableError as error:
            raise _unavailable_for_filter(error) from error
    return mode


def check_safety(
    images: list[Image.Image],
    mode: str | None = None,
    *,
    model_location: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> list[SafetyResult]:
    """The safety verdict on each image, by the rules of `mode` (see the module docstring). Images are not changed."""
    mode = resolve_safety_mode(mode)
    if mode == "off" or not images:
        return [UNCHECKED] * len(images)
    try:
        checker = load_safety_checker(model_location, device=device)
    except WeightsUnavailableError as error:
        if mode == "filter":
            raise _unavailable_for_filter(error) from error
        _warn_unavailable_once(str(error))
        return [UNCHECKED] * len(images)
    return classify_images(checker, images)


def apply_safety_mode(
    images: list[Image.Image],
    mode: str | None = None,
    *,
    model_location: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> tuple[list[Image.Image], list[SafetyResult]]:
    """Check `images` and, in mode `filter`, replace each flagged one by a blurred copy.

    Returns (images, results), both in the order given.
    """
    mode = resolve_safety_mode(mode)
    results = check_safety(images, mode, model_location=model_location, device=device)
    if mode != "filter":
        return list(images), results
    safe_images = []
    safe_results = []
    for image, result in zip(images, results):
        if result.is_nsfw:
            image = blur_image(image)
            result = dataclasses.replace(result, filtered=True)
        safe_images.append(image)
        safe_results.append(result)
    return safe_images, safe_results


def blur_image(image: Image.Image) -> Image.Image:
    """A copy of `image` blurred so strongly that only large colour areas remain."""
    from PIL import ImageFilter

    radius = max(4.0, max(image.size) * FILTER_BLUR_FRACTION)
    return image.filter(ImageFilter.GaussianBlur(radius))


@dataclasses.dataclass(frozen=True)
class SafetyChecker:
    """A loaded checker: the network (keys as in the hub checkpoint) and the image preprocessor that feeds it."""

    model: torch.nn.Module
    image_processor: object
    device: torch.device


def load_safety_checker(
    model_location: str | os.PathLike | None = None, *, device: str | torch.device | None = None
) -> SafetyChecker:
    """The checker from `model_location` (a local repo folder), IMAGINAIRY_SAFETY_CHECKER_MODEL, or the hub cache;
    loaded once per folder and device."""
    from imaginairy.utils.devices import default_device

    folder = safety_checker_dir(model_location)
    return _load_safety_checker(folder, str(device or default_device()))


def safety_checker_dir(model_location: str | os.PathLike | None = None) -> Path:
    """The folder holding the checker's config, preprocessor config and weights (downloading into the hub cache if
    needed). Raises WeightsUnavailableError when the files cannot be had."""
    from imaginairy.models.weights import resolve_model_folder

    return resolve_model_folder(
        SAFETY_CHECKER_REPO,
        local_copy=model_location if model_location is not None else Settings.from_environment().safety_checker_model,
        config_patterns=CONFIG_FILES,
        required_files=CONFIG_FILES,
        description="Safety checker",
        env_var=SAFETY_CHECKER_ENV,
    )


def build_safety_checker_model(vision_config, projection_dim: int) -> torch.nn.Module:
    """The checker network with fresh weights; its state dict keys are those of the hub checkpoint:
    vision_model.* (a transformers CLIPVisionModel), visual_projection.weight, concept_embeds,
    special_care_embeds, concept_embeds_weights, special_care_embeds_weights."""
    import torch
    from transformers import CLIPVisionModel

    model = torch.nn.Module()
    model.vision_model = CLIPVisionModel(vision_config)
    model.visual_projection = torch.nn.Linear(vision_config.hidden_size, projection_dim, bias=False)
    model.concept_embeds = torch.nn.Parameter(torch.ones(CONCEPT_COUNT, projection_dim), requires_grad=False)
    model.special_care_embeds = torch.nn.Parameter(
        torch.ones(SPECIAL_CARE_COUNT, projection_dim), requires_grad=False
    )
    model.concept_embeds_weights = torch.nn.Parameter(torch.ones(CONCEPT_COUNT), requires_grad=False)
    model.special_care_embeds_weights = torch.nn.Parameter(torch.ones(SPECIAL_CARE_COUNT), requires_grad=False)
    return model.eval()


def concept_scores(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(concept_scores [N, 17], special_care [N] bool) for CLIP-preprocessed images [N, 3, H, W].

    A concept score is the cosine similarity of the image embedding and the concept embedding minus the
    concept's threshold, plus 0.01 (a stricter check) when any special-care concept scores above 0; rounded to
    3 decimals.
    """
    import torch

    def unit_vectors(vectors: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(vectors.float(), dim=-1)

    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixel_values).pooler_output
        image_embeds = unit_vectors(model.visual_projection(pooled))
        special_similarity = image_embeds @ unit_vectors(model.special_care_embeds).T
        concept_similarity = image_embeds @ unit_vectors(model.concept_embeds).T
    special_scores = special_similarity - model.special_care_embeds_weights.float()
    special_care = (torch.round(special_scores, decimals=SCORE_DECIMALS) > 0).any(dim=1)
    adjustment = special_care.float().unsqueeze(1) * SPECIAL_CARE_ADJUSTMENT
    scores = concept_similarity - model.concept_embeds_weights.float() + adjustment
    return torch.round(scores, decimals=SCORE_DECIMALS), special_care


def classify_images(checker: SafetyChecker, images: list[Image.Image]) -> list[SafetyResult]:
    """Run the checker on `images` (any PIL modes) and return one checked SafetyResult each."""
    rgb_images = [image.convert("RGB") for image in images]
    inputs = checker.image_processor(images=rgb_images, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(checker.device, dtype=next(checker.model.parameters()).dtype)
    scores, special_care = concept_scores(checker.model, pixel_values)
    results = []
    for image_scores, image_special_care in zip(scores.cpu().tolist(), special_care.cpu().tolist()):
        results.append(
            SafetyResult(
                is_nsfw=any(score > 0 for score in image_scores),
                checked=True,
                concept_scores=tuple(image_scores),
                special_care=image_special_care,
            )
        )
    if any(result.is_nsfw for result in results):
        logger.info("The safety checker flagged %d of %d images.", sum(r.is_nsfw for r in results), len(results))
    return results


@in_shared_cache
def _load_safety_checker(folder: Path, device: str) -> SafetyChecker:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor

    from imaginairy.models.weights import load_state_dict, transformers_weights_file

    config = CLIPConfig.from_pretrained(folder)
    model = build_safety_checker_model(config.vision_config, config.projection_dim)
    checkpoint = load_state_dict(transformers_weights_file(folder))
    state_dict = {key: value for key, value in checkpoint.items() if not _is_position_ids(key)}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(
            f"Safety checker weights in {folder} do not fit the checker: {first_line(error)}"
            f" (expected a copy of the {SAFETY_CHECKER_REPO} repo)"
        ) from error
    image_processor = CLIPImageProcessor.from_pretrained(folder)
    torch_device = torch.device(device)
    return SafetyChecker(model=model.to(torch_device), image_processor=image_processor, device=torch_device)


def _is_position_ids(key: str) -> bool:
    # older checkpoints saved CLIP's position_ids buffer, which transformers no longer keeps in the state dict
    return key.endswith("embeddings.position_ids")


def _unavailable_for_filter(error: WeightsUnavailableError) -> SafetyCheckUnavailableError:
    return SafetyCheckUnavailableError(
        f"Safety mode 'filter' needs the safety checker, which is unavailable ({error});"
        " use safety mode 'classify' or 'off' to generate without it"
    )


@functools.lru_cache(maxsize=None)
def _warn_unavailable_once(message: str) -> None:
    """Log `message` as a warning the first time it is seen in this process (lru_cache remembers it)."""
    logger.warning("No safety check was run: the safety checker cannot be loaded (point %s at a local copy, or use"
                   " --safety-mode off); --log-level DEBUG says why", SAFETY_CHECKER_ENV)
    logger.debug("safety checker unavailable: %s", message)
