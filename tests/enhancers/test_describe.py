"""Captions with a tiny random-weight BLIP, through the real tokenizer, processor and generate loop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_enhancers import TINY_BLIP_WORDS, make_tiny_blip

from imaginairy.enhancers.describe import BLIP_MODEL_ENV, BLIP_REPO, generate_caption
from imaginairy.errors import ImageLoadError, WeightsUnavailableError


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


def photo(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_caption_is_the_decoded_output_of_blip_generate(blip_dir):
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    caption = generate_caption(photo(), model_location=blip_dir, max_new_tokens=8, num_beams=2)

    processor = BlipProcessor.from_pretrained(blip_dir)
    model = BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
    with torch.no_grad():
        ids = model.generate(**processor(images=photo(), return_tensors="pt"), max_new_tokens=8, num_beams=2)
    expected = processor.decode(ids[0], skip_special_tokens=True).strip()

    assert isinstance(caption, str) and caption
    assert caption == expected
    assert generate_caption(photo(), model_location=blip_dir, max_new_tokens=8, num_beams=2) == caption
    words = set(TINY_BLIP_WORDS)
    assert all(word in words or any(word.endswith(w.lstrip("#")) for w in words) for word in caption.split())
    assert "[DEC]" not in caption and "[SEP]" not in caption


def test_caption_from_a_file_path_and_the_environment_variable(blip_dir, tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    photo(1).save(path)
    monkeypatch.setenv(BLIP_MODEL_ENV, str(blip_dir))
    from_file = generate_caption(path, max_new_tokens=8)
    assert from_file == generate_caption(photo(1), model_location=blip_dir, max_new_tokens=8)


def test_unreadable_image_is_an_image_load_error(blip_dir, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.txt"):
        generate_caption(not_an_image, model_location=blip_dir)
    with pytest.raises(ImageLoadError, match="directory"):
        generate_caption(tmp_path, model_location=blip_dir)


def test_model_unavailable_offline_names_the_repo_and_the_local_copy_option(monkeypatch, tmp_path):
    monkeypatch.delenv(BLIP_MODEL_ENV, raising=False)
    with pytest.raises(WeightsUnavailableError) as raised:
        generate_caption(photo())
    message = str(raised.value)
    assert BLIP_REPO in message and BLIP_MODEL_ENV in message and "\n" not in message

    with pytest.raises(WeightsUnavailableError, match=BLIP_MODEL_ENV):
        generate_caption(photo(), model_location=tmp_path / "empty")
