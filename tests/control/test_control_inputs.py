"""ControlInput validation and the bad inputs of a controlled generation: one clear error each."""

from __future__ import annotations

import pytest
from PIL import Image

from imaginairy import ControlInput, ImaginePrompt
from imaginairy.errors import ImageLoadError, InvalidInputError

IMAGE = Image.new("RGB", (64, 64), "white")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sketchy", "image": IMAGE}, "control mode 'sketchy' is not supported; choose one of: 'canny'"),
        ({"mode": "shuffle", "image": IMAGE}, "'shuffle' is not supported: its ControlNet pools"),
        ({"mode": "canny", "image": 42}, "control image must be a file path"),
        ({"mode": "depth", "image": IMAGE}, "has no preprocessor yet: give a ready depth hint"),
        ({"mode": "canny", "image": IMAGE, "strength": -1}, "control strength must be a number from 0 to 10"),
        ({"mode": "canny", "image": IMAGE, "start": 0.6, "end": 0.5}, "control start 0.6 must be below"),
        ({"mode": "canny", "image": IMAGE, "canny_thresholds": (200, 100)}, "canny thresholds must be"),
        ({"mode": "canny", "image": IMAGE, "model": "control_v11f1p_sd15_depth.pth"},
         "is a depth ControlNet but the mode is 'canny'"),
    ],
    ids=["unknown-mode", "unsupported-mode", "image-not-an-image", "no-preprocessor", "strength", "window",
         "thresholds", "mode-and-checkpoint-disagree"],
)
def test_bad_control_input_is_one_clear_error(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        ControlInput(**kwargs)


def test_a_checkpoint_named_for_its_mode_is_accepted():
    assert ControlInput("depth", IMAGE, preprocess=False, model="x/control_v11f1p_sd15_depth.pth").mode == "depth"


def test_control_without_an_image_needs_an_init_image():
    with pytest.raises(InvalidInputError, match="has no image: give its image or an init_image"):
        ImaginePrompt("x", control_inputs=[ControlInput("canny")])
    assert ImaginePrompt("x", init_image=IMAGE, control_inputs=[ControlInput("canny")]).control_inputs[0].image is None


def test_control_inputs_round_trip_through_metadata(tmp_path):
    IMAGE.save(tmp_path / "edges.png")
    control = ControlInput("canny", str(tmp_path / "edges.png"), strength=0.5, end=0.8, canny_thresholds=(10, 20))
    metadata = ImaginePrompt("x", control_inputs=[control]).to_metadata()
    again = ImaginePrompt.from_metadata(metadata).control_inputs[0]
    assert (again.mode, again.strength, again.end, again.canny_thresholds) == ("canny", 0.5, 0.8, (10, 20))
    assert metadata["control_inputs"][0]["image"] == str(tmp_path / "edges.png") == again.image.source


def test_control_image_file_that_is_not_an_image_fails_in_one_line(tiny_models, tiny_controlnets, tmp_path):
    from imaginairy import imagine

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1, control_inputs=[
        ControlInput("canny", str(not_an_image), model=str(tiny_controlnets["tiny-controlnet-sd15"]))])
    with pytest.raises(ImageLoadError) as error:
        list(imagine([prompt]))
    assert "notes.png" in str(error.value) and "\n" not in str(error.value)


def test_missing_controlnet_weights_stop_the_run_before_it_starts(tiny_models):
    from imaginairy.api import fetch_weights_first
    from imaginairy.errors import WeightsUnavailableError
    from imaginairy.settings import Settings

    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1, control_inputs=[
        ControlInput("canny", IMAGE)], safety_mode="off")
    with pytest.raises(WeightsUnavailableError, match="control_v11p_sd15_canny.pth") as error:
        fetch_weights_first([prompt], Settings.from_environment())
    assert "\n" not in str(error.value)
