"""Outpainting: the spec language, the canvas and its fillings, output sizes, the original region kept, and the
seamless boost."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imaginairy import ImaginePrompt, imagine
from imaginairy.errors import InvalidInputError
from imaginairy.masking.outpaint import (
    OutpaintAmounts,
    expand_canvas,
    frequency_matched_noise,
    parse_outpaint_spec,
)
from imaginairy.models.cache import ModelCache

WIDTH, HEIGHT = 72, 64


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_bytes=2**30)


@pytest.fixture
def init_image() -> Image.Image:
    rng = np.random.default_rng(1)
    stripes = (np.arange(WIDTH)[None, :, None] % 12 < 6) * 150 + rng.integers(0, 60, (HEIGHT, WIDTH, 3))
    return Image.fromarray(stripes.astype(np.uint8))


def run(prompt, cache):
    return next(imagine(prompt, device="cpu", model_cache=cache))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(
    ("spec", "amounts"),
    [
        ("all100", OutpaintAmounts(100, 100, 100, 100)),
        ("all100,up50,left200", OutpaintAmounts(up=50, down=100, left=200, right=100)),
        ("up50,all100", OutpaintAmounts(up=50, down=100, left=100, right=100)),
        (" right8 , DOWN16 ", OutpaintAmounts(down=16, right=8)),
        ("all0,up8", OutpaintAmounts(up=8)),
    ],
)
def test_parse_outpaint_spec(spec, amounts):
    assert parse_outpaint_spec(spec) == amounts


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "spec like"),
        ("all", "'all' in 'all' is not <side><pixels>"),
        ("up-5", "'up-5'"),
        ("sideways10", "'sideways10'"),
        ("up10,,down5", "'' in"),
        ("up10,up20", "given twice"),
        ("all99999", "at most"),
        ("all0", "'all0' adds no pixels: give at least one side more than 0"),
        ("up0,left0", "adds no pixels"),
    ],
)
def test_malformed_outpaint_spec_is_a_usage_error(spec, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_outpaint_spec(spec)
    with pytest.raises(InvalidInputError):
        ImaginePrompt("x", init_image=Image.new("RGB", (8, 8)), outpaint=spec)


def test_expand_canvas_keeps_the_original_and_marks_the_new_area(init_image):
    amounts = OutpaintAmounts(up=5, down=0, left=7, right=16)
    canvas, new_area = expand_canvas(init_image, amounts)
    assert canvas.size == new_area.size == (WIDTH + 23, HEIGHT + 5)
    assert np.array_equal(pixels(canvas.crop((7, 5, 7 + WIDTH, 5 + HEIGHT))), pixels(init_image))
    new = np.asarray(new_area) > 0
    assert new.sum() == canvas.width * canvas.height - WIDTH * HEIGHT
    assert not new[5:, 7:7 + WIDTH].any()


def test_frequency_matched_noise_fills_only_the_area_with_the_images_colours(init_image):
    fill = Image.new("L", init_image.size, 0)
    fill.paste(255, (0, 0, WIDTH // 2, HEIGHT))
    filled = frequency_matched_noise(init_image, fill, seed=3)
    assert np.array_equal(pixels(filled)[:, WIDTH // 2:], pixels(init_image)[:, WIDTH // 2:])
    noise, kept = pixels(filled)[:, : WIDTH // 2], pixels(init_image)[:, WIDTH // 2:]
    assert not np.array_equal(noise, pixels(init_image)[:, : WIDTH // 2])
    for channel in range(3):  # rank matched onto the kept pixels' values
        assert kept[..., channel].min() <= noise[..., channel].min()
        assert noise[..., channel].max() <= kept[..., channel].max()
        assert abs(noise[..., channel].mean() - kept[..., channel].mean()) < 10
    assert np.array_equal(pixels(frequency_matched_noise(init_image, fill, seed=3)), pixels(filled))
    assert not np.array_equal(pixels(frequency_matched_noise(init_image, fill, seed=4)), pixels(filled))


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sd15-inpainting"])
@pytest.mark.parametrize(("spec", "left", "top", "size"), [("all8", 8, 8, (88, 80)), ("up20,right3", 0, 20, (75, 84))])
def test_outpainting_sizes_and_the_original_region_is_kept(tiny_models, cache, init_image, model, spec, left, top,
                                                          size):
    prompt = ImaginePrompt("a landscape", init_image=init_image, outpaint=spec, model=str(tiny_models[model]),
                           steps=3, seed=2, init_image_strength=0.0, safety_mode="off")
    result = run(prompt, cache)
    modified = result.images["modified_original"]
    assert modified.size == size
    assert result.images["generated"].size == (-(-size[0] // 8) * 8, -(-size[1] // 8) * 8)
    original_region = (left, top, left + WIDTH, top + HEIGHT)
    assert np.array_equal(pixels(modified.crop(original_region)), pixels(init_image))
    new = np.asarray(result.images["mask_binary"]) > 0
    assert new.sum() == size[0] * size[1] - WIDTH * HEIGHT
    canvas, _ = expand_canvas(init_image, parse_outpaint_spec(spec))
    assert (np.abs(pixels(modified) - pixels(canvas)).sum(-1) > 0)[new].mean() > 0.5  # the new area was generated


def test_outpainting_with_a_given_size_generates_at_that_size(tiny_models, cache, init_image):
    prompt = ImaginePrompt("a landscape", init_image=init_image, outpaint="left16", width=64, height=64,
                           model=str(tiny_models["tiny-sd15"]), steps=2, seed=2, safety_mode="off")
    result = run(prompt, cache)
    assert result.images["generated"].size == (64, 64)
    assert result.images["modified_original"].size == (WIDTH + 16, HEIGHT)


def test_seamless_boost_changes_the_protected_area_more(tiny_models, cache, init_image):
    init_image = init_image.crop((0, 0, 64, 64))
    mask = Image.new("L", init_image.size, 0)
    mask.paste(255, (0, 0, 32, 64))

    def protected_change(boost):
        prompt = ImaginePrompt("a landscape", init_image=init_image, mask_image=mask, seamless_boost=boost,
                               init_image_strength=0.0, model=str(tiny_models["tiny-sd15"]), steps=3, seed=5,
                               width=64, height=64, safety_mode="off")
        result = run(prompt, cache)
        protected = np.asarray(mask) == 0
        return np.abs(pixels(result.images["generated"]) - pixels(init_image)).sum(-1)[protected].mean()

    unboosted, half, full = protected_change(0.0), protected_change(0.5), protected_change(1.0)
    assert unboosted == 0  # without the boost the protected area is exactly the original
    assert 0 < half < full


def test_a_canvas_grown_past_the_largest_size_is_generated_scaled_down(init_image):
    from imaginairy.masking.inpaint import generation_frame

    prompt = ImaginePrompt("x", init_image=init_image, outpaint="right40")
    width, height, box = generation_frame(prompt, (4120, 1030), 512, outpainting=True)
    assert (width, height) == (4096, 1024) and box == (0, 0, 4120, 1030)
