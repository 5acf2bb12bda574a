"""Inpainting on the tiny models: masks from images, transparency and CLIPSeg; keep/replace; the pixel-exact paste
into the original; bad masks; the automatic choice of the inpainting model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from imaginairy import ImaginePrompt, imagine
from imaginairy.api import imagine_image_files
from imaginairy.errors import EmptyMaskError, InvalidInputError, MaskExpressionError
from imaginairy.masking.clipseg import load_clipseg, mask_from_expression
from imaginairy.masking.inpaint import (
    cover_box,
    inpainting_mask_and_image,
    mask_tensor,
    softened,
)
from imaginairy.models.cache import ModelCache
from imaginairy.models.registry import resolve_model
from imaginairy.settings import CLIPSEG_MODEL_ENV

WIDTH, HEIGHT = 80, 64  # the init image; generation is 64x64, so the frame is a centre crop
MODELS = ["tiny-sd15", "tiny-sd15-inpainting"]


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_bytes=2**30)


@pytest.fixture
def init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 200, WIDTH)[None, :, None] + rng.integers(0, 55, (HEIGHT, WIDTH, 3))
    return Image.fromarray(gradient.astype(np.uint8))


@pytest.fixture
def mask_image() -> Image.Image:
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (20, 12, 52, 44))
    return mask


def edit_prompt(tiny_models, model="tiny-sd15", **settings) -> ImaginePrompt:
    defaults = {"model": str(tiny_models[model]), "steps": 3, "seed": 3, "width": 64, "height": 64,
                "sampler_type": "ddim", "safety_mode": "off"}
    return ImaginePrompt("a red apple", **{**defaults, **settings})


def run(prompt, cache):
    return next(imagine(prompt, device="cpu", model_cache=cache))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def changed(image: Image.Image, original: Image.Image) -> np.ndarray:
    return (np.abs(pixels(image) - pixels(original)).sum(axis=-1) > 0)


def white(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) > 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sampler_type", ["ddim", "k_euler_a"])
def test_modified_original_equals_the_original_outside_the_mask(tiny_models, cache, init_image, mask_image, model,
                                                                sampler_type):
    prompt = edit_prompt(tiny_models, model, init_image=init_image, mask_image=mask_image, sampler_type=sampler_type)
    result = run(prompt, cache)
    assert set(result.images) >= {"generated", "modified_original", "mask_binary", "mask_grayscale"}
    modified = result.images["modified_original"]
    assert modified.size == init_image.size and result.img is modified
    assert np.array_equal(white(result.images["mask_binary"]), white(mask_image))
    # every pixel outside the mask (and so outside its softened version, which lies inside it) is the original's
    assert not changed(modified, init_image)[~white(mask_image)].any()
    assert changed(modified, init_image)[white(mask_image)].mean() > 0.9
    # the generated 64x64 image is the centre crop, also exact outside the mask
    frame = init_image.crop(cover_box(init_image.size, 64, 64))
    frame_mask = white(mask_image.crop(cover_box(init_image.size, 64, 64)))
    assert not changed(result.images["generated"], frame)[~frame_mask].any()


def test_softened_mask_fades_in_inside_the_mask_only():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    soft = softened(mask)
    assert torch.equal(soft[mask == 0], torch.zeros_like(soft[mask == 0]))
    assert soft[0, 0, 32, 32] == pytest.approx(1, abs=1e-6)
    assert 0.3 < soft[0, 0, 16, 32] < 0.9  # the edge is soft


def test_keep_and_replace_are_complements(tiny_models, cache, init_image, mask_image):
    replace = run(edit_prompt(tiny_models, init_image=init_image, mask_image=mask_image), cache)
    keep = run(edit_prompt(tiny_models, init_image=init_image, mask_image=mask_image, mask_mode="keep"), cache)
    replaced_area, kept_area = white(replace.images["mask_binary"]), white(keep.images["mask_binary"])
    assert np.array_equal(replaced_area, ~kept_area)
    assert np.array_equal(np.asarray(keep.images["mask_grayscale"]), 255 - np.asarray(replace.images["mask_grayscale"]))
    keep_changes = changed(keep.images["modified_original"], init_image)
    assert not keep_changes[white(mask_image)].any()
    assert keep_changes[~white(mask_image)].mean() > 0.5  # the centre crop of the outside is regenerated


def test_mask_image_of_another_size_is_resized_with_a_note(tiny_models, cache, init_image, mask_image, caplog):
    small_mask = mask_image.resize((WIDTH // 2, HEIGHT // 2), Image.Resampling.NEAREST)
    with caplog.at_level(logging.WARNING, logger="imaginairy"):
        result = run(edit_prompt(tiny_models, init_image=init_image, mask_image=small_mask), cache)
    assert "resizing the mask" in caplog.text and "40x32" in caplog.text
    assert result.images["mask_binary"].size == init_image.size
    assert np.array_equal(white(result.images["mask_binary"]), white(mask_image))


def test_png_transparency_is_the_mask(tiny_models, cache, init_image, mask_image, tmp_path):
    rgba = init_image.convert("RGBA")
    rgba.putalpha(Image.eval(mask_image, lambda v: 255 - v))  # transparent where the mask is white
    path = tmp_path / "with-hole.png"
    rgba.save(path)
    result = run(edit_prompt(tiny_models, init_image=str(path)), cache)
    assert np.array_equal(white(result.images["mask_binary"]), white(mask_image))
    assert not changed(result.images["modified_original"], init_image)[~white(mask_image)].any()


def test_opaque_png_is_plain_img2img(tiny_models, cache, init_image):
    result = run(edit_prompt(tiny_models, init_image=init_image.convert("RGBA")), cache)
    assert set(result.images) == {"generated"}


def test_empty_mask_is_a_clear_error_and_nothing_is_written(tiny_models, init_image, tmp_path):
    black = Image.new("L", init_image.size, 0)
    prompt = edit_prompt(tiny_models, init_image=init_image, mask_image=black)
    with pytest.raises(EmptyMaskError, match="no white pixels.*nothing was generated"):
        imagine_image_files(prompt, tmp_path / "out", device="cpu", model_cache=ModelCache(2**30), show_progress=False)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_keep_mode_with_a_full_mask_leaves_nothing_to_regenerate(tiny_models, cache, init_image):
    full = Image.new("L", init_image.size, 255)
    with pytest.raises(EmptyMaskError, match="Nothing to regenerate"):
        run(edit_prompt(tiny_models, init_image=init_image, mask_image=full, mask_mode="keep"), cache)


def test_mask_outside_the_generated_crop_is_an_error(tiny_models, cache, init_image):
    edge = Image.new("L", init_image.size, 0)
    edge.paste(255, (0, 0, 4, HEIGHT))  # the 64x64 centre crop starts at x = 8
    with pytest.raises(EmptyMaskError, match="outside the centre crop"):
        run(edit_prompt(tiny_models, init_image=init_image, mask_image=edge), cache)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"mask_prompt": "fruit"}, InvalidInputError, "mask_prompt edits an init image"),
        ({"mask_image": Image.new("L", (8, 8))}, InvalidInputError, "mask_image edits an init image"),
        ({"outpaint": "all10"}, InvalidInputError, "outpaint edits an init image"),
        ({"init_image": Image.new("RGB", (8, 8)), "mask_prompt": "fruit", "mask_image": Image.new("L", (8, 8))},
         InvalidInputError, "either mask_prompt or mask_image"),
        ({"init_image": Image.new("RGB", (8, 8)), "mask_prompt": "fruit AND"}, MaskExpressionError, "column"),
        ({"mask_mode": "invert"}, InvalidInputError, "mask_mode"),
        ({"mask_modify_original": "yes"}, InvalidInputError, "mask_modify_original"),
        ({"seamless_boost": 1.5}, InvalidInputError, "seamless_boost"),
        ({"mask_image": 42, "init_image": Image.new("RGB", (8, 8))}, InvalidInputError, "mask_image must be"),
    ],
)
def test_bad_mask_settings_fail_at_construction(settings, error, message):
    with pytest.raises(error, match=message):
        ImaginePrompt("x", **settings)


def test_mask_settings_are_in_the_metadata_and_round_trip(tmp_path, mask_image, init_image):
    init_path, mask_path = tmp_path / "init.png", tmp_path / "mask.png"
    init_image.save(init_path)
    mask_image.save(mask_path)
    prompt = ImaginePrompt("x", init_image=str(init_path), mask_image=str(mask_path), mask_mode="keep",
                           mask_modify_original=False, outpaint="up8", seamless_boost=0.25, model="sd-2.1")
    metadata = prompt.to_metadata()
    assert {key: metadata[key] for key in ("mask_prompt", "mask_image", "mask_mode", "mask_modify_original",
                                            "outpaint", "seamless_boost")} == {
        "mask_prompt": None, "mask_image": str(mask_path), "mask_mode": "keep", "mask_modify_original": False,
        "outpaint": "up8", "seamless_boost": 0.25}
    assert ImaginePrompt.from_metadata(metadata).to_metadata() == metadata


@pytest.mark.parametrize(
    ("settings", "model", "config_name"),
    [
        ({"mask_prompt": "fruit"}, "sd-1.5-inpainting", "sd-v1-inpainting.yaml"),
        ({"outpaint": "all64"}, "sd-1.5-inpainting", "sd-v1-inpainting.yaml"),
        ({"mask_prompt": "fruit", "model": "sd-2.1"}, "sd-2.1", "sd-v2.yaml"),
        ({"mask_prompt": "fruit", "model": "sd-1.5"}, "sd-1.5", "sd-v1.yaml"),  # named explicitly: kept
        ({"mask_prompt": "fruit", "model": "sd-2.0-inpainting"}, "sd-2.0-inpainting", "sd-v2-inpainting.yaml"),
        ({}, "sd-1.5", "sd-v1.yaml"),
    ],
)
def test_inpainting_model_is_chosen_when_no_model_is_named(settings, model, config_name):
    prompt = ImaginePrompt("x", init_image=Image.new("RGB", (64, 64)), **settings)
    assert prompt.model == model
    assert resolve_model(prompt.model).config_path.name == config_name  # resolved without loading anything


def test_a_model_file_is_never_switched(tiny_models):
    path = str(tiny_models["tiny-sd15"])
    prompt = ImaginePrompt("x", init_image=Image.new("RGB", (64, 64)), mask_prompt="fruit", model=path)
    assert prompt.model == path


def test_inpainting_model_without_a_mask_generates(tiny_models, cache):
    result = run(edit_prompt(tiny_models, "tiny-sd15-inpainting"), cache)
    assert result.img.size == (64, 64) and set(result.images) == {"generated"}


def test_inpainting_conditioning_blanks_the_regenerated_pixels():
    regenerate = torch.zeros(1, 1, 16, 24)
    regenerate[..., 3:9, 8:16] = 1
    image = torch.rand(1, 3, 16, 24) * 2 - 1
    cells, masked = inpainting_mask_and_image(regenerate, image)
    assert cells.shape == (1, 1, 2, 3)
    assert cells[0, 0].tolist() == [[0, 1, 0], [0, 1, 0]]  # a cell is regenerated if any of its pixels is
    assert torch.equal(masked, image * (1 - regenerate))


@pytest.fixture
def clipseg_setting(monkeypatch, tiny_clipseg_dir):
    monkeypatch.setenv(CLIPSEG_MODEL_ENV, str(tiny_clipseg_dir))
    return tiny_clipseg_dir


@pytest.mark.parametrize("mask_mode", ["replace", "keep"])
def test_mask_prompt_segments_the_init_image_with_clipseg(tiny_models, cache, init_image, clipseg_setting, mask_mode):
    text = "fruit{-0.2} OR bowl{-0.25}"
    result = run(edit_prompt(tiny_models, init_image=init_image, mask_prompt=text, mask_mode=mask_mode), cache)
    grayscale, binary = mask_from_expression(init_image, text, load_clipseg(clipseg_setting, device="cpu"))
    binary = binary.numpy()
    assert 0.05 < binary.mean() < 0.95
    expected = binary if mask_mode == "replace" else ~binary
    assert np.array_equal(white(result.images["mask_binary"]), expected)
    expected_gray = grayscale.numpy() if mask_mode == "replace" else 1 - grayscale.numpy()
    assert np.abs(np.asarray(result.images["mask_grayscale"]) / 255 - expected_gray).max() <= 0.5 / 255 + 1e-6
    assert not changed(result.images["modified_original"], init_image)[~expected].any()


def test_mask_prompt_matching_nothing_is_a_clear_error(tiny_models, cache, init_image, clipseg_setting):
    with pytest.raises(EmptyMaskError, match="mask prompt 'fruit\\{\\*0\\}' matched nothing"):
        run(edit_prompt(tiny_models, init_image=init_image, mask_prompt="fruit{*0}"), cache)


def test_mask_tensor_scales_to_unit_interval():
    assert mask_tensor(Image.new("L", (3, 2), 255)).tolist() == [[[[1.0] * 3] * 2]]
