"""The environment is read once into Settings, and what imagine() is given wins over the environment."""

import pytest

from imaginairy import ImaginePrompt, imagine
from imaginairy.errors import InvalidInputError
from imaginairy.settings import DEFAULT_CLIPSEG_LOCATION, Settings


def test_settings_from_the_environment():
    environ = {
        "IMAGINAIRY_DEVICE": "cuda:1",
        "IMAGINAIRY_SAFETY_MODE": "filter",
        "IMAGINAIRY_SAFETY_CHECKER_MODEL": "/models/checker",
        "IMAGINAIRY_BLIP_MODEL": "/models/blip",
        "IMAGINAIRY_CLIPSEG_MODEL": "/models/clipseg",
    }
    assert Settings.from_environment(environ) == Settings(
        device="cuda:1", safety_mode="filter", safety_checker_model="/models/checker", blip_model="/models/blip",
        clipseg_model="/models/clipseg",
    )  # fmt: skip
    assert Settings.from_environment({}) == Settings(None, None, None, None, DEFAULT_CLIPSEG_LOCATION)


def test_imagine_uses_the_settings_it_is_given(tiny_models, monkeypatch):
    monkeypatch.setenv("IMAGINAIRY_DEVICE", "cpu")
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1)
    with pytest.raises(InvalidInputError, match="IMAGINAIRY_DEVICE='gpu' is not a torch device"):
        next(imagine(prompt, settings=Settings(device="gpu")))
    with pytest.raises(InvalidInputError, match="Unknown IMAGINAIRY_SAFETY_MODE 'loud'"):
        next(imagine(prompt, device="cpu", settings=Settings(safety_mode="loud")))
