"""Precision modes, the "auto" precision default, and memory modes, on the tiny models.

bf16 tolerance: bfloat16 keeps 8 bits of mantissa (~4e-3 relative per rounding), and the error of every UNet call
feeds the next step. On the tiny SD 1.5 model, 4 DDIM steps at guidance 7.5, the decoded image ([0, 1] pixels)
differs from the float32 one by a mean absolute ~7e-3 (max ~5e-2); we allow a mean of 2e-2 and a max of 0.15 (a wrong
dtype path, e.g. an unscaled latent or a lost guidance term, moves the mean by > 0.1).
"""

import numpy as np
import pytest
import torch

from imaginairy.api import imagine
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import resolve_runtime_settings
from imaginairy.schema import PRECISIONS, ImaginePrompt
from imaginairy.utils.devices import cpu_has_native_bf16, resolve_precision

BF16_MEAN_TOLERANCE = 2e-2
BF16_MAX_TOLERANCE = 0.15


def generate(tiny_models, cache, **settings):
    prompt = ImaginePrompt("a red apple", model=str(tiny_models["tiny-sd15"]), steps=4, seed=3, sampler_type="ddim",
                           safety_mode="off", **settings)  # fmt: skip
    return next(imagine(prompt, device="cpu", model_cache=cache))


def pixels(result) -> np.ndarray:
    return np.asarray(result.img, dtype=np.float32) / 255


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_bytes=2**30)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_generates(tiny_models, cache, precision):
    result = generate(tiny_models, cache, precision=precision)
    assert result.img.size == (64, 64)
    assert result.prompt.precision != "auto"  # resolved before generating, and recorded so in the metadata
    assert np.isfinite(pixels(result)).all() and pixels(result).std() > 0


def test_bf16_is_close_to_float32(tiny_models, cache):
    full = pixels(generate(tiny_models, cache, precision="full"))
    bf16 = pixels(generate(tiny_models, cache, precision="bf16"))
    difference = np.abs(full - bf16)
    assert difference.mean() < BF16_MEAN_TOLERANCE
    assert difference.max() < BF16_MAX_TOLERANCE


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it_natively():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "full")
    assert resolve_precision("auto", "mps") == "full"
    for precision in ("full", "autocast", "bf16", "fp16"):
        assert resolve_precision(precision, "cpu") == precision


def test_runtime_settings_resolve_auto_and_keep_explicit_choices():
    assert resolve_runtime_settings(ImaginePrompt("x"), "cpu").precision == resolve_precision("auto", "cpu")
    assert resolve_runtime_settings(ImaginePrompt("x", precision="full", memory_mode="mid"), "cpu").precision == "full"


def test_default_precision_is_auto():
    assert ImaginePrompt("x").precision == "auto"
    assert ImaginePrompt("x").memory_mode == "high"


@pytest.mark.parametrize("memory_mode", ["mid", "low"])
def test_memory_modes_give_the_image_of_high(tiny_models, cache, memory_mode):
    high = generate(tiny_models, cache, precision="full")
    other = generate(tiny_models, cache, precision="full", memory_mode=memory_mode)
    assert other.img.tobytes() == high.img.tobytes()


def test_large_images_are_decoded_in_tiles_within_the_untiled_size_limit(tiny_models, cache):
    from imaginairy.pipeline import needs_tiles

    assert not needs_tiles(torch.zeros(1, 4, 128, 128))
    assert needs_tiles(torch.zeros(1, 4, 64, 129))
    result = generate(tiny_models, cache, precision="bf16", width=1088, height=64)
    assert result.img.size == (1088, 64)
