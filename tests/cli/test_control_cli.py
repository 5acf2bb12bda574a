"""`imagine --control-*` and `aimg control-preview`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imaginairy.cli.aimg import aimg
from imaginairy.cli.imagine import imagine_cmd
from imaginairy.utils.metadata import read_metadata


@pytest.fixture
def photo_file(tmp_path) -> Path:
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((80, 72)).save(path)
    return path


def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


def test_control_preview_writes_the_canny_hint_and_never_overwrites(photo_file, tmp_path):
    output = tmp_path / "hint.png"
    result = invoke(aimg, "control-preview", photo_file, "--mode", "canny", "--canny-low", 50, "-o", output)
    assert result.exit_code == 0, result.output
    expected = cv2.Canny(np.asarray(Image.open(photo_file).convert("RGB")), 50, 200)
    assert (np.asarray(Image.open(output).convert("RGB")) == expected[:, :, None]).all()
    again = invoke(aimg, "control-preview", photo_file, "-o", output)
    assert again.exit_code == 1 and "Not overwriting" in again.output


def test_control_preview_of_a_mode_without_preprocessor_is_a_usage_error(photo_file, tmp_path):
    result = invoke(aimg, "control-preview", photo_file, "--mode", "depth", "-o", tmp_path / "d.png")
    assert result.exit_code == 2 and "ready depth hint" in result.output
    assert not (tmp_path / "d.png").exists()


def test_imagine_with_two_controls(tiny_models, tiny_controlnets, photo_file, tmp_path):
    nets = [tiny_controlnets["tiny-controlnet-sd15"], tiny_controlnets["tiny-controlnet-sd15-b"]]
    result = invoke(imagine_cmd, "a dog", "--model", tiny_models["tiny-sd15"], "--steps", 2, "--seed", 1,
                    "--outdir", tmp_path / "out", "--output-file-extension", "png",
                    "--control-mode", "canny", "--control-image", photo_file, "--control-model", nets[0],
                    "--control-mode", "tile", "--control-image", photo_file, "--control-model", nets[1],
                    "--control-strength", 0.5, "--control-strength", 1.5, "--control-end", 0.5)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "control").iterdir())) == 1
    assert len(list((tmp_path / "out" / "control-2").iterdir())) == 1
    (generated,) = (tmp_path / "out" / "generated").iterdir()
    controls = read_metadata(generated)["control_inputs"]
    assert [(c["mode"], c["strength"], c["end"]) for c in controls] == [("canny", 0.5, 0.5), ("tile", 1.5, 0.5)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--control-mode", "sketchy"], "Invalid value for '--control-mode'"),
        (["--control-image", "x.png"], "--control-image needs a --control-mode"),
        (["--control-mode", "canny", "--control-mode", "tile", "--control-strength", 1, "--control-strength", 1,
          "--control-strength", 1], "give --control-strength once per --control-mode (2)"),
        (["--control-mode", "canny"], "has no image: give its image or an init_image"),
    ],
    ids=["unknown-mode", "image-without-mode", "too-many-strengths", "no-image"],
)
def test_bad_control_options_are_usage_errors(args, message, tmp_path):
    result = invoke(imagine_cmd, "a dog", "--outdir", tmp_path, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not any(tmp_path.iterdir())
