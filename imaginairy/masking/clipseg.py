"""Masks from text: CLIPSeg finds each phrase of a mask prompt in an image, the mask language combines them.

CLIPSeg (Lüddecke & Ecker, 2022) runs through transformers' `CLIPSegForImageSegmentation`, with the weights of
`CIDAS/clipseg-rd64-refined`, read from a local copy of that repo folder or from the huggingface_hub cache
(downloaded there once if needed, see `imaginairy.models.weights.resolve_hub_snapshot`).

Post-processing, per phrase: sigmoid probabilities, resized to the image with bilinear interpolation, smoothed
with a gaussian blur of sigma = 1% of the image's shorter side (at least 1 px). The expression's grayscale mask
is thresholded at 0.5 and the binary mask is grown by 1% of the shorter side (at least 2 px, e.g. 5 px at 512)
in every direction, so seams of an edit fall outside the object.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from imaginairy.errors import ModelLoadError, ModelNotFoundError, WeightsUnavailableError, first_line
from imaginairy.masking.expression import evaluate, parse_mask_expression, phrases
from imaginairy.models.cache import in_shared_cache
from imaginairy.settings import DEFAULT_CLIPSEG_LOCATION

CLIPSEG_FILE_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
HUB_REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

BLUR_SIGMA_FRACTION = 0.01
MIN_BLUR_SIGMA_PIXELS = 1.0
MASK_THRESHOLD = 0.5
GROW_FRACTION = 0.01
MIN_GROW_PIXELS = 2


@dataclass(frozen=True, eq=False)
class ClipSeg:
    """A loaded CLIPSeg network with its processor (tokenizer + image preprocessing), and where it runs."""

    network: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype


def load_clipseg(
    location: str | Path = DEFAULT_CLIPSEG_LOCATION,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> ClipSeg:
    """CLIPSeg from a local repo folder or a hub repo id, on `device` (default: the best one present) in `dtype`.

    Loaded models stay in the device's shared model cache and are returned again.
    Raises WeightsUnavailableError when a hub repo is neither cached nor downloadable, ModelNotFoundError for a
    path that is not a folder, ModelLoadError when the folder does not hold a CLIPSeg model.
    """
    if device is None:
        from imaginairy.utils.devices import default_device

        device = default_device()
    return _load_clipseg_cached(str(location), torch.device(device), dtype)


@in_shared_cache
def _load_clipseg_cached(location: str, device: torch.device, dtype: torch.dtype) -> ClipSeg:
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    folder = clipseg_folder(location)
    try:
        from imaginairy.utils.dependency_noise import quiet_transformers_loading

        quiet_transformers_loading()
        network = CLIPSegForImageSegmentation.from_pretrained(folder, dtype=dtype)
        processor = CLIPSegProcessor.from_pretrained(folder)
    except (OSError, ValueError) as err:
        reason = first_line(err)
        raise ModelLoadError(
            f"Cannot load CLIPSeg from {folder}: {reason}; the folder needs config.json, model.safetensors,"
            " vocab.json, merges.txt and preprocessor_config.json as in the CIDAS/clipseg-rd64-refined repo"
        ) from err
    return ClipSeg(network=network.to(device).eval(), processor=processor, device=device, dtype=dtype)


def clipseg_folder(location: str) -> Path:
    """The local folder of the CLIPSeg repo at `location`: a folder path, or a hub repo id resolved in the cache."""
    from imaginairy.models.weights import resolve_hub_snapshot

    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if not HUB_REPO_ID_PATTERN.match(location):
        raise ModelNotFoundError(
            f"CLIPSeg folder not found: {path}; point IMAGINAIRY_CLIPSEG_MODEL at a folder holding a copy of the"
            f" {DEFAULT_CLIPSEG_LOCATION} repo, or at a hub repo id"
        )
    try:
        return resolve_hub_snapshot(location, CLIPSEG_FILE_PATTERNS)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(
            f"CLIPSeg weights unavailable: {err}; or set IMAGINAIRY_CLIPSEG_MODEL=/path/to/a/local/copy/of/the/repo"
        ) from err


def segment(image: Image.Image, phrases_to_find: list[str], model: ClipSeg) -> dict[str, torch.Tensor]:
    """How likely each pixel of `image` shows each phrase: {phrase: float32 tensor [H, W] in [0, 1]}.

    All distinct phrases go through the network in one batch (the image is preprocessed once); the maps are
    on `model.device`, smoothed as described in the module docstring.
    """
    distinct_phrases = list(dict.fromkeys(phrases_to_find))
    if not distinct_phrases:
        return {}
    rgb = image.convert("RGB")
    pixel_values = model.processor.image_processor(images=rgb, return_tensors="pt").pixel_values
    tokens = model.processor.tokenizer(distinct_phrases, padding=True, truncation=True, return_tensors="pt")
    batch_size = len(distinct_phrases)
    with torch.inference_mode():
        logits = model.network(
            input_ids=tokens.input_ids.to(model.device),
            attention_mask=tokens.attention_mask.to(model.device),
            pixel_values=pixel_values.to(model.device, model.dtype).expand(batch_size, -1, -1, -1),
        ).logits
    probabilities = torch.sigmoid(logits.float()).reshape(batch_size, 1, *logits.shape[-2:])
    resized = F.interpolate(probabilities, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)
    sigma = max(MIN_BLUR_SIGMA_PIXELS, BLUR_SIGMA_FRACTION * min(rgb.width, rgb.height))
    smoothed = gaussian_blur(resized, sigma).clamp(0, 1)
    return {phrase: smoothed[index, 0] for index, phrase in enumerate(distinct_phrases)}


def mask_from_expression(
    image: Image.Image,
    expression_text: str,
    model: ClipSeg,
    *,
    threshold: float = MASK_THRESHOLD,
    grow_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask a mask prompt describes in `image`: (grayscale float32 [H, W] in [0, 1], binary bool [H, W]).

    The binary mask is `grayscale > threshold`, grown by `grow_pixels` (default: 1% of the shorter side, at
    least 2). Raises MaskExpressionError for a malformed prompt before anything runs.
    """
    expression = parse_mask_expression(expression_text)
    phrase_masks = segment(image, phrases(expression), model)
    grayscale = evaluate(expression, phrase_masks)
    if grow_pixels is None:
        grow_pixels = default_grow_pixels(image.width, image.height)
    return grayscale, grow_mask(grayscale > threshold, grow_pixels)


def default_grow_pixels(width: int, height: int) -> int:
    return max(MIN_GROW_PIXELS, round(GROW_FRACTION * min(width, height)))


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A bool mask [H, W] with every True pixel spread `pixels` in each direction (a square neighbourhood)."""
    if pixels <= 0:
        return mask
    as_float = mask.float()[None, None]
    grown = F.max_pool2d(as_float, kernel_size=2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0] > 0


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of one-channel images [N, 1, H, W], edges extended, kernel radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    rows_blurred = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(rows_blurred, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
