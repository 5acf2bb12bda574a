"""Loading image-to-image models (upscalers, face restorers) through spandrel, with a small cache of loaded models.

spandrel detects the architecture from a checkpoint's keys and builds it; the extra architectures
(CodeFormer among them) come from spandrel-extra-arches. We combine both into a registry of our own, so the
global spandrel registry is never changed.
"""

from __future__ import annotations

import functools
import os

import torch

from imaginairy.errors import ModelLoadError, first_line
from imaginairy.models.cache import in_shared_cache


def load_image_model(
    location: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """The spandrel `ImageModelDescriptor` for the weights at `location` (local path, URL or `hf://` file),
    in eval mode on `device` (default: the best available) in `dtype` (default: float32).

    Loaded models are cached by location, device and dtype. Raises WeightsUnavailableError when the weights
    cannot be had, and ModelLoadError when the file is not a model spandrel knows.
    """
    from imaginairy.utils.devices import default_device

    device = torch.device(device) if device is not None else default_device()
    return _load_image_model_cached(os.fspath(location), str(device), dtype or torch.float32)


@in_shared_cache
def _load_image_model_cached(location: str, device: str, dtype: torch.dtype):
    from imaginairy.models.weights import load_state_dict, resolve_weights

    path = resolve_weights(location)
    state_dict = load_state_dict(path)
    model = image_model_from_state_dict(state_dict, source=str(path))
    return model.to(device=torch.device(device), dtype=supported_dtype(model, dtype)).eval()


def image_model_from_state_dict(state_dict: dict, *, source: str = "state dict"):
    """Detect the architecture of `state_dict` (plain or wrapped, e.g. {"params_ema": ...}) and build the model.

    Raises ModelLoadError naming `source` when no known architecture matches or the tensors do not fit it.
    """
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        model = ModelLoader(registry=image_model_registry()).load_from_state_dict(state_dict)
    except UnsupportedModelError as err:
        raise ModelLoadError(
            f"Cannot load {source}: its keys match no known image model architecture;"
            " pass a RealESRGAN / CodeFormer checkpoint (.pth or .safetensors)"
        ) from err
    # a state dict that matches an architecture's keys but not its shapes fails inside the model's constructor
    # or load_state_dict, with library-specific exception types
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError, AssertionError) as err:
        raise ModelLoadError(
            f"Cannot load {source}: its tensors do not fit the detected architecture ({type(err).__name__}:"
            f" {first_line(err)}); the file may be damaged or a variant we do not support"
        ) from err
    if not isinstance(model, ImageModelDescriptor):
        raise ModelLoadError(
            f"Cannot load {source}: it is a {model.architecture.name} model, not an image-to-image model"
        )
    return model


@functools.cache
def image_model_registry():
    """spandrel's architectures plus those of spandrel-extra-arches, in a registry of our own."""
    from spandrel import MAIN_REGISTRY
    from spandrel_extra_arches import EXTRA_REGISTRY

    registry = MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def supported_dtype(model, dtype: torch.dtype) -> torch.dtype:
    """`dtype` if the model can run in it, else float32."""
    if dtype == torch.float16 and not model.supports_half:
        return torch.float32
    if dtype == torch.bfloat16 and not model.supports_bfloat16:
        return torch.float32
    return dtype


