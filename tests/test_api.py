"""imagine()'s orchestration: every weights file a prompt needs is fetched before any model loads."""

from __future__ import annotations

import pytest

from imaginairy import ImaginePrompt, imagine
from imaginairy.errors import ImaginAIryError
from imaginairy.models import runtime
from imaginairy.settings import Settings


def test_a_mask_prompts_clipseg_weights_are_fetched_before_any_model_loads(tiny_models, tmp_path, monkeypatch):
    def no_model_loading(*args):
        raise AssertionError("a model was loaded before the CLIPSeg weights were fetched")

    monkeypatch.setattr(runtime, "load_model", no_model_loading)
    init = tmp_path / "init.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(init)
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15-inpainting"]), init_image=str(init),
                           mask_prompt="a cat", steps=1)
    missing = tmp_path / "no-clipseg-here"
    with pytest.raises(ImaginAIryError, match="no-clipseg-here"):
        next(imagine(prompt, device="cpu", settings=Settings(clipseg_model=str(missing))))
