"""Image captions with BLIP (the `Salesforce/blip-image-captioning-base` model, through transformers).

The model folder is `model_location` if given, else `IMAGINAIRY_BLIP_MODEL`, else the hub repo from the
huggingface_hub cache (downloaded there if needed and not offline). A loaded model is kept per folder and device.

This module imports no heavy library at the top: torch and transformers are imported when a caption is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imaginairy.errors import ModelLoadError, first_line
from imaginairy.models.cache import in_shared_cache
from imaginairy.settings import BLIP_MODEL_ENV, Settings

if TYPE_CHECKING:
    import torch
    from PIL import Image

BLIP_REPO = "Salesforce/blip-image-captioning-base"
CONFIG_FILES = ("*.json", "vocab.txt")
DEFAULT_MAX_NEW_TOKENS = 30
DEFAULT_NUM_BEAMS = 3


@dataclass(frozen=True)
class CaptionModel:
    """A loaded BLIP captioner: the network, its processor (image preprocessing + tokenizer) and its device."""

    model: torch.nn.Module
    processor: object
    device: torch.device


def generate_caption(
    image: Image.Image | str | os.PathLike,
    *,
    model_location: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    num_beams: int = DEFAULT_NUM_BEAMS,
) -> str:
    """A short English description of `image` (a PIL image or an image file path), e.g. "a dog sitting on a couch".

    Deterministic: beam search, no sampling. Raises ImageLoadError for an unreadable file and
    WeightsUnavailableError when the BLIP model cannot be had.
    """
    rgb_image = _as_rgb_image(image)
    captioner = load_caption_model(model_location, device=device)
    caption_ids = generate_caption_ids(captioner, rgb_image, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return captioner.processor.decode(caption_ids, skip_special_tokens=True).strip()


def generate_caption_ids(
    captioner: CaptionModel, image: Image.Image, *, max_new_tokens: int, num_beams: int
) -> torch.Tensor:
    """The token ids of the caption BLIP generates for one RGB image (a 1-d tensor, special tokens included)."""
    import torch

    inputs = captioner.processor(images=image, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(captioner.device, dtype=next(captioner.model.parameters()).dtype)
    with torch.no_grad():
        output_ids = captioner.model.generate(
            pixel_values=pixel_values, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
        )
    return output_ids[0].cpu()


def load_caption_model(
    model_location: str | os.PathLike | None = None, *, device: str | torch.device | None = None
) -> CaptionModel:
    """The BLIP captioner from `model_location`, IMAGINAIRY_BLIP_MODEL or the hub cache; loaded once per folder
    and device."""
    from imaginairy.utils.devices import default_device

    folder = blip_model_dir(model_location)
    return _load_caption_model(folder, str(device or default_device()))


def blip_model_dir(model_location: str | os.PathLike | None = None) -> Path:
    """The folder holding BLIP's config, processor files and weights. Raises WeightsUnavailableError when the
    files cannot be had."""
    from imaginairy.models.weights import resolve_model_folder

    return resolve_model_folder(
        BLIP_REPO,
        local_copy=model_location if model_location is not None else Settings.from_environment().blip_model,
        config_patterns=CONFIG_FILES,
        required_files=("config.json",),
        description="Caption model",
        env_var=BLIP_MODEL_ENV,
    )


@in_shared_cache
def _load_caption_model(folder: Path, device: str) -> CaptionModel:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    try:
        from imaginairy.utils.dependency_noise import quiet_transformers_loading

        quiet_transformers_loading()
        processor = BlipProcessor.from_pretrained(folder)
        model = BlipForConditionalGeneration.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"Cannot load the caption model from {folder}: {first_line(error)}"
            f" (expected a copy of the {BLIP_REPO} hub repo)"
        ) from error
    torch_device = torch.device(device)
    return CaptionModel(model=model.eval().to(torch_device), processor=processor, device=torch_device)


def _as_rgb_image(image: Image.Image | str | os.PathLike) -> Image.Image:
    from PIL import Image

    from imaginairy.utils.images import LazyLoadingImage

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return LazyLoadingImage(filepath=image).as_pil()
