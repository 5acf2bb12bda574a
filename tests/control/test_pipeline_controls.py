"""Controlled generations end to end: the hint images are saved beside the results and recorded in their metadata,
the init image is the control source when no control image is given, and a strength of 0 is no control at all."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from imaginairy import ControlInput, ImaginePrompt, imagine, imagine_image_files, pipeline
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model
from imaginairy.utils.metadata import read_metadata


def photo(size=(64, 64)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize(size)


def test_hint_is_saved_in_the_control_folder_with_the_metadata(tiny_models, tiny_controlnets, tmp_path):
    control = ControlInput("canny", photo((80, 80)), model=str(tiny_controlnets["tiny-controlnet-sd15"]))
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=2, seed=1, control_inputs=[control],
                           safety_mode="off")
    imagine_image_files([prompt], tmp_path, output_file_extension="png", show_progress=False)
    (hint_file,) = (tmp_path / "control").iterdir()
    hint = Image.open(hint_file)
    import cv2

    expected = cv2.Canny(np.asarray(photo((80, 80)).resize((64, 64), Image.Resampling.LANCZOS)), 100, 200)
    assert (np.asarray(hint.convert("RGB")) == expected[:, :, None]).all()
    assert read_metadata(hint_file)["control_inputs"][0]["mode"] == "canny"
    (generated,) = (tmp_path / "generated").iterdir()
    assert read_metadata(generated)["control_inputs"][0]["model"] == str(tiny_controlnets["tiny-controlnet-sd15"])


def test_without_a_control_image_the_init_image_is_the_source(tiny_models, tiny_controlnets):
    init = photo()
    control = ControlInput("tile", model=str(tiny_controlnets["tiny-controlnet-sd15"]))
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), init_image=init, init_image_strength=0.5,
                           steps=2, seed=1, control_inputs=[control], safety_mode="off")
    (result,) = imagine([prompt])
    assert np.array_equal(np.asarray(result.images["control"]), np.asarray(init))


def test_two_controls_give_two_hints_and_strength_zero_is_no_control(tiny_models, tiny_controlnets):
    nets = [str(tiny_controlnets[name]) for name in ("tiny-controlnet-sd15", "tiny-controlnet-sd15-b")]
    controls = [ControlInput("tile", photo(), strength=0, model=nets[0]),
                ControlInput("canny", photo(), strength=0, model=nets[1])]
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=2, seed=1, control_inputs=controls, width=64,
                           height=64, precision="full")
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    with torch.inference_mode():
        controlled = pipeline.generate_latent(prompt, model)
        plain = pipeline.generate_latent(ImaginePrompt(**{**prompt.__dict__, "control_inputs": []}), model)
        _, hints = pipeline.prepare_controls(prompt, model, pipeline.prepare_edit(prompt, 64, "cpu"), "cpu")
    torch.testing.assert_close(controlled, plain, atol=1e-6, rtol=0)
    assert sorted(hints) == ["control", "control-2"]


def test_tile_mode_reaches_the_controlnet(tiny_models, tiny_controlnets):
    from imaginairy.modules.layers import TileableConv2d

    control = ControlInput("tile", photo(), model=str(tiny_controlnets["tiny-controlnet-sd15"]))
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=2, control_inputs=[control], width=64,
                           height=64, tile_mode="xy")
    model = load_model(prompt, "cpu", ModelCache(max_bytes=2**30))
    stack, _ = pipeline.prepare_controls(prompt, model, pipeline.prepare_edit(prompt, 64, "cpu"), "cpu")
    convs = [m for m in stack.controls[0].controlnet.modules() if isinstance(m, TileableConv2d)]
    assert len(convs) > 8 and all(conv.tile_mode == "xy" for conv in convs)  # hint encoder and UNet blocks
