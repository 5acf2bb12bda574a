"""The model cache: LRU by bytes, and the shared per-device cache the helper-model loaders use."""

from __future__ import annotations

import dataclasses

import torch

from imaginairy.models.cache import ModelCache, held_bytes, in_shared_cache, shared_model_cache


@dataclasses.dataclass
class Bundle:
    network: torch.nn.Module
    processor: object


def test_held_bytes_counts_modules_inside_bundles():
    network = torch.nn.Linear(10, 10)  # 110 float32 parameters
    assert held_bytes(network) == 440
    assert held_bytes(Bundle(network, processor="tokenizer")) == 440
    assert held_bytes("not a model") == 0


def test_least_recently_used_goes_first_and_the_newest_always_stays():
    cache = ModelCache(max_bytes=1000)
    first = cache.get("a", lambda: torch.nn.Linear(10, 10))
    cache.get("b", lambda: torch.nn.Linear(10, 10))
    assert cache.get("a", lambda: None) is first  # a hit refreshes "a"
    cache.get("c", lambda: torch.nn.Linear(10, 10))  # 3 x 440 > 1000: "b", the least recently used, goes
    assert "a" in cache and "c" in cache and "b" not in cache
    cache.get("huge", lambda: torch.nn.Linear(100, 100))  # bigger than the budget: kept alone
    assert len(cache) == 1 and "huge" in cache


def test_shared_cache_loaders_load_once_per_arguments_and_count_against_the_budget():
    calls = []

    @in_shared_cache
    def load_bundle(location, device):
        calls.append((location, device))
        return Bundle(torch.nn.Linear(4, 4), processor=None)

    first = load_bundle("some/model", "cpu")
    assert load_bundle("some/model", "cpu") is first
    load_bundle("other/model", "cpu")
    assert calls == [("some/model", "cpu"), ("other/model", "cpu")]
    assert any(held_bytes(m) == 80 for m in shared_model_cache("cpu")._models.values())
