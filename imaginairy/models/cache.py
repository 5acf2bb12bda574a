"""An LRU cache of loaded models, bounded by the bytes their parameters take, and the shared one per device.

The diffusion models (imaginairy.api) and the helper models (safety checker, BLIP, CLIPSeg, CodeFormer, RetinaFace,
RealESRGAN: loaders decorated with `in_shared_cache`) share one budget per kind of device. torch is imported only
when a model is measured or loaded, so modules the CLI imports at start-up may use the decorator.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def held_bytes(loaded: object) -> int:
    """The tensor bytes a loaded model holds: a module's, or those of the modules in a dataclass bundling a network
    with its processor."""
    import torch

    if isinstance(loaded, torch.nn.Module):
        return module_bytes(loaded)
    if dataclasses.is_dataclass(loaded):
        return sum(held_bytes(getattr(loaded, field.name)) for field in dataclasses.fields(loaded))
    return 0


class ModelCache:
    """Keeps recently used models while their total size fits `max_bytes`; the newest one is always kept.

    A model is evicted *before* a new one is loaded when the two would not fit together, so switching models never
    holds two copies that the budget does not allow.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._models: OrderedDict[Hashable, torch.nn.Module] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], torch.nn.Module], expected_bytes: int = 0) -> torch.nn.Module:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        self._evict_until_fits(expected_bytes)
        model = load()
        self._models[key] = model
        self._evict_until_fits(0)
        return model

    def clear(self) -> None:
        self._models.clear()
        _free_memory()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)

    def _evict_until_fits(self, incoming_bytes: int) -> None:
        evicted = False
        while self._models and self._total_bytes() + incoming_bytes > self.max_bytes:
            if incoming_bytes == 0 and len(self._models) == 1:
                break
            key, _model = self._models.popitem(last=False)
            logger.info("unloading model %s to make room", key)
            evicted = True
        if evicted:
            _free_memory()

    def _total_bytes(self) -> int:
        return sum(held_bytes(m) for m in self._models.values())


@functools.lru_cache(maxsize=None)
def shared_model_cache(device_type: str) -> ModelCache:
    """The process-wide model cache of a kind of device: models stay loaded while they fit in half of its memory
    (the GPU's for CUDA, the recommended working set for Apple MPS, else the machine's RAM)."""
    import psutil
    import torch

    if device_type == "cuda":
        memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    elif device_type == "mps":
        memory = torch.mps.recommended_max_memory()
    else:
        memory = psutil.virtual_memory().total
    return ModelCache(max_bytes=memory // 2)


def in_shared_cache(loader: Callable) -> Callable:
    """For a model loader called as `loader(location, device, ...)` with hashable arguments: its results are kept in
    the device's shared cache, so they count against the same budget as the diffusion models and are unloaded,
    least recently used first, when room is needed."""

    @functools.wraps(loader)
    def cached_loader(*args):
        import torch

        device_type = torch.device(args[1]).type
        key = (loader.__module__, loader.__qualname__, *map(str, args))
        return shared_model_cache(device_type).get(key, lambda: loader(*args))

    return cached_loader


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
