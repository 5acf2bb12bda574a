"""An LRU cache of loaded diffusion models, bounded by the bytes their parameters take."""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

logger = logging.getLogger(__name__)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


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
        return sum(module_bytes(m) for m in self._models.values())


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
