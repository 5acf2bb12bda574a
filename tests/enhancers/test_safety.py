"""The NSFW safety checker: parity with diffusers' reference checker on tiny random weights, and the three modes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image, ImageFilter
from tiny_enhancers import make_tiny_safety_checker

from imaginairy.enhancers import safety
from imaginairy.enhancers.safety import (
    SAFETY_CHECKER_REPO,
    apply_safety_mode,
    check_safety,
    ensure_safety_available,
    resolve_safety_mode,
)
from imaginairy.errors import InvalidInputError, SafetyCheckUnavailableError

ALWAYS_FLAG_THRESHOLD = -1.5  # below any cosine similarity
NEVER_FLAG_THRESHOLD = 1.5  # above any cosine similarity


@pytest.fixture(scope="module")
def checker_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety-checkers")
    return {
        "random": make_tiny_safety_checker(root / "random"),
        "flagging": make_tiny_safety_checker(root / "flagging", concept_threshold=ALWAYS_FLAG_THRESHOLD),
        "clean": make_tiny_safety_checker(root / "clean", concept_threshold=NEVER_FLAG_THRESHOLD),
    }


def noise_image(seed: int, size=(48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def high_frequency_energy(image: Image.Image) -> float:
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.mean(np.diff(gray, axis=0) ** 2) + np.mean(np.diff(gray, axis=1) ** 2))


def test_scores_and_flags_match_diffusers_reference(checker_dirs):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
    from transformers import CLIPImageProcessor

    folder = checker_dirs["random"]
    images = [noise_image(seed) for seed in range(8)]
    results = check_safety(images, "classify", model_location=folder)

    reference = StableDiffusionSafetyChecker.from_pretrained(folder).eval()
    pixel_values = CLIPImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt").pixel_values
    _, reference_flags = reference(clip_input=pixel_values, images=[np.zeros((2, 2, 3))] * len(images))
    with torch.no_grad():
        embeds = reference.visual_projection(reference.vision_model(pixel_values)[1])
        special = cosine_distance(embeds, reference.special_care_embeds) - reference.special_care_embeds_weights
        adjustment = 0.01 * (special.round(decimals=3) > 0).any(dim=1, keepdim=True)
        reference_scores = cosine_distance(embeds, reference.concept_embeds) - reference.concept_embeds_weights
        reference_scores = reference_scores + adjustment

    assert [result.is_nsfw for result in results] == list(reference_flags)
    assert set(reference_flags) == {True, False}, "the tiny checker should flag some of these images and not others"
    ours = np.array([result.concept_scores for result in results])
    np.testing.assert_allclose(ours, reference_scores.numpy(), atol=1.5e-3)
    assert all(result.checked for result in results)


def test_classify_flags_without_changing_images(checker_dirs):
    images = [noise_image(1), noise_image(2, size=(64, 32))]
    out_images, results = apply_safety_mode(images, "classify", model_location=checker_dirs["flagging"])
    assert [(r.is_nsfw, r.checked, r.filtered) for r in results] == [(True, True, False)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out_images, images))

    _, results = apply_safety_mode(images, "classify", model_location=checker_dirs["clean"])
    assert [(r.is_nsfw, r.checked, r.filtered) for r in results] == [(False, True, False)] * 2


def test_filter_blurs_flagged_images(checker_dirs):
    images = [noise_image(3, size=(96, 64))]
    out_images, results = apply_safety_mode(images, "filter", model_location=checker_dirs["flagging"])
    assert (results[0].is_nsfw, results[0].checked, results[0].filtered) == (True, True, True)
    blurred = out_images[0]
    assert blurred.size == images[0].size
    assert not np.array_equal(np.asarray(blurred), np.asarray(images[0]))
    assert high_frequency_energy(blurred) < 0.01 * high_frequency_energy(images[0])
    lightly_blurred = images[0].filter(ImageFilter.GaussianBlur(2))
    assert high_frequency_energy(blurred) < 0.1 * high_frequency_energy(lightly_blurred)


def test_filter_keeps_unflagged_images(checker_dirs):
    images = [noise_image(4)]
    out_images, results = apply_safety_mode(images, "filter", model_location=checker_dirs["clean"])
    assert (results[0].is_nsfw, results[0].checked, results[0].filtered) == (False, True, False)
    assert np.array_equal(np.asarray(out_images[0]), np.asarray(images[0]))


def test_off_never_loads_the_checker(monkeypatch, tmp_path):
    def load_spy(*args, **kwargs):
        raise AssertionError("mode off must not load the safety checker")

    monkeypatch.setattr(safety, "load_safety_checker", load_spy)
    images = [noise_image(5)]
    out_images, results = apply_safety_mode(images, "off", model_location=tmp_path / "nothing-here")
    assert out_images == images
    assert [(r.is_nsfw, r.checked) for r in results] == [(None, False)]
    assert ensure_safety_available("off", model_location=tmp_path / "nothing-here") == "off"
    monkeypatch.setenv("IMAGINAIRY_SAFETY_MODE", "OFF")
    assert check_safety(images)[0].checked is False


def test_mode_comes_from_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("IMAGINAIRY_SAFETY_MODE", raising=False)
    assert resolve_safety_mode() == "classify"
    monkeypatch.setenv("IMAGINAIRY_SAFETY_MODE", "Filter")
    assert resolve_safety_mode() == "filter"
    assert resolve_safety_mode("off") == "off"
    with pytest.raises(InvalidInputError, match="IMAGINAIRY_SAFETY_MODE"):
        monkeypatch.setenv("IMAGINAIRY_SAFETY_MODE", "blur")
        resolve_safety_mode()
    with pytest.raises(InvalidInputError, match="off, classify, filter"):
        check_safety([noise_image(6)], "strict")


def test_classify_without_weights_warns_once_and_records_no_check(tmp_path, caplog):
    missing = tmp_path / "no-checker-here"
    assert ensure_safety_available("classify", model_location=missing) == "classify"
    with caplog.at_level(logging.DEBUG, logger="imaginairy.enhancers.safety"):
        first = check_safety([noise_image(7)], "classify", model_location=missing)
        images, second = apply_safety_mode([noise_image(8)], "classify", model_location=missing)
    assert [(r.is_nsfw, r.checked) for r in first + second] == [(None, False)] * 2
    warnings = [record for record in caplog.records if "No safety check was run" in record.getMessage()]
    assert len(warnings) == 1
    assert "IMAGINAIRY_SAFETY_CHECKER_MODEL" in warnings[0].getMessage() and len(warnings[0].getMessage()) < 200
    details = [record for record in caplog.records if record.levelno == logging.DEBUG]
    assert any(str(missing) in record.getMessage() for record in details)


def test_filter_without_weights_fails_closed_before_generating(monkeypatch):
    monkeypatch.delenv("IMAGINAIRY_SAFETY_CHECKER_MODEL", raising=False)  # the hub cache is empty and offline
    with pytest.raises(SafetyCheckUnavailableError) as raised:
        ensure_safety_available("filter")
    message = str(raised.value)
    assert SAFETY_CHECKER_REPO in message and "classify" in message and "\n" not in message
    with pytest.raises(SafetyCheckUnavailableError):
        apply_safety_mode([noise_image(9)], "filter")
