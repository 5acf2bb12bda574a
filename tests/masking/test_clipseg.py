import shutil
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from imaginairy.errors import MaskExpressionError, ModelLoadError, ModelNotFoundError, WeightsUnavailableError
from imaginairy.masking.clipseg import (
    default_grow_pixels,
    gaussian_blur,
    grow_mask,
    load_clipseg,
    mask_from_expression,
    segment,
)
from imaginairy.masking.expression import evaluate, parse_mask_expression

IMAGE_WIDTH, IMAGE_HEIGHT = 70, 50
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def clipseg(tiny_clipseg_dir):
    return load_clipseg(tiny_clipseg_dir, device="cpu", dtype=torch.float32)


@pytest.fixture
def image():
    pixels = torch.arange(IMAGE_HEIGHT * IMAGE_WIDTH * 3, dtype=torch.int64).reshape(IMAGE_HEIGHT, IMAGE_WIDTH, 3)
    return Image.fromarray((pixels % 251).to(torch.uint8).numpy(), mode="RGB")


@contextmanager
def recorded_batch_sizes(network):
    """The batch size of every forward call of `network` while the block runs (a forward hook)."""
    batch_sizes = []

    def record(module, args, kwargs, output):
        batch_sizes.append(kwargs["input_ids"].shape[0])

    handle = network.register_forward_hook(record, with_kwargs=True)
    try:
        yield batch_sizes
    finally:
        handle.remove()


def test_segment_gives_one_map_per_phrase_at_image_size(clipseg, image):
    masks = segment(image, ["fruit", "fruit stem", "a bowl"], clipseg)
    assert list(masks) == ["fruit", "fruit stem", "a bowl"]
    for mask in masks.values():
        assert mask.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)
        assert mask.dtype == torch.float32
        assert mask.min() >= 0 and mask.max() <= 1


def test_segment_one_phrase(clipseg, image):
    masks = segment(image.convert("L"), ["fruit"], clipseg)
    assert masks["fruit"].shape == (IMAGE_HEIGHT, IMAGE_WIDTH)


def test_segment_no_phrases_runs_nothing(clipseg, image):
    with recorded_batch_sizes(clipseg.network) as batch_sizes:
        assert segment(image, [], clipseg) == {}
    assert batch_sizes == []


def test_phrase_maps_do_not_depend_on_the_batch(clipseg, image):
    together = segment(image, ["fruit", "bowl"], clipseg)
    alone = segment(image, ["bowl"], clipseg)
    torch.testing.assert_close(together["bowl"], alone["bowl"], atol=1e-5, rtol=1e-5)


def test_all_phrases_of_an_expression_go_through_one_forward_call(clipseg, image):
    with recorded_batch_sizes(clipseg.network) as batch_sizes:
        grayscale, binary = mask_from_expression(image, "fruit OR bowl AND NOT fruit{*2} OR fruit stem", clipseg)
    assert batch_sizes == [3]
    assert grayscale.shape == binary.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)


def test_duplicate_phrases_are_segmented_once(clipseg, image):
    with recorded_batch_sizes(clipseg.network) as batch_sizes:
        masks = segment(image, ["fruit", "bowl", "fruit", "bowl"], clipseg)
    assert batch_sizes == [2]
    assert list(masks) == ["fruit", "bowl"]


def test_mask_from_expression_grayscale_and_binary(clipseg, image):
    expression = "fruit OR bowl{*1.5}"
    grayscale, binary = mask_from_expression(image, expression, clipseg, threshold=0.6, grow_pixels=3)
    expected = evaluate(parse_mask_expression(expression), segment(image, ["fruit", "bowl"], clipseg))
    torch.testing.assert_close(grayscale, expected)
    assert grayscale.min() >= 0 and grayscale.max() <= 1
    assert binary.dtype == torch.bool
    assert torch.equal(binary, grow_mask(grayscale > 0.6, 3))


def test_mask_from_expression_threshold_one_gives_empty_binary_mask(clipseg, image):
    _, binary = mask_from_expression(image, "fruit", clipseg, threshold=1.0)
    assert not binary.any()


def test_malformed_expression_fails_before_segmenting(clipseg, image):
    with recorded_batch_sizes(clipseg.network) as batch_sizes, pytest.raises(MaskExpressionError, match="column 10"):
        mask_from_expression(image, "fruit OR ", clipseg)
    assert batch_sizes == []


def test_grow_mask_spreads_each_pixel_into_a_square():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[4, 4] = True
    grown = grow_mask(mask, 2)
    assert grown.sum() == 25
    assert grown[2:7, 2:7].all()
    assert torch.equal(grow_mask(mask, 0), mask)


def test_default_grow_is_one_percent_of_the_shorter_side_at_least_two_pixels():
    assert default_grow_pixels(512, 768) == 5
    assert default_grow_pixels(2048, 1024) == 10
    assert default_grow_pixels(64, 64) == 2


def test_gaussian_blur_keeps_constants_and_smooths_edges():
    constant = torch.full((1, 1, 5, 7), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 2.0), constant)
    step = torch.zeros(1, 1, 9, 9)
    step[..., 5:] = 1.0
    blurred = gaussian_blur(step, 1.0)
    assert blurred.shape == step.shape
    assert 0 < blurred[0, 0, 4, 4] < 0.5 < blurred[0, 0, 4, 5] < 1
    assert blurred.min() >= 0 and blurred.max() <= 1 + 1e-6


def test_loaded_model_is_cached_by_location_and_device(tiny_clipseg_dir, clipseg):
    assert load_clipseg(str(tiny_clipseg_dir), device=torch.device("cpu")) is clipseg
    assert not clipseg.network.training


def test_hub_repo_id_resolves_from_the_hub_cache(tiny_clipseg_dir, tmp_path, monkeypatch, image):
    repo_cache = tmp_path / "models--imaginairy-tests--tiny-clipseg"
    shutil.copytree(tiny_clipseg_dir, repo_cache / "snapshots" / FAKE_COMMIT)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(FAKE_COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_clipseg("imaginairy-tests/tiny-clipseg", device="cpu")
    assert segment(image, ["fruit"], model)["fruit"].shape == (IMAGE_HEIGHT, IMAGE_WIDTH)


def test_offline_without_cached_weights_is_weights_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as raised:
        load_clipseg("CIDAS/clipseg-rd64-refined", device="cpu")
    message = str(raised.value)
    assert "\n" not in message
    assert "CIDAS/clipseg-rd64-refined" in message
    assert "set IMAGINAIRY_CLIPSEG_MODEL=/path/to/a/local/copy" in message


def test_missing_folder_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="CLIPSeg folder not found"):
        load_clipseg(tmp_path / "no" / "such" / "folder", device="cpu")


def test_folder_without_a_model_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="Cannot load CLIPSeg"):
        load_clipseg(tmp_path, device="cpu")
