"""The A1111-compatible /sdapi/v1 routes, driven by `webuiapi` (a real A1111 client from PyPI), on the tiny models."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from server_helpers import CALL_TIMEOUT, SIZE, wait_for

LONG_STEPS = 150



def b64_png(img) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(http_api, route: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{http_api.http_port}{route}", json=body, timeout=CALL_TIMEOUT, **kwargs)


def test_txt2img_batch_seeds_settings_and_infotext(webui):
    result = webui.txt2img(prompt="a red apple", negative_prompt="blurry", seed=1234, steps=2, cfg_scale=5.0,
                           width=SIZE, height=SIZE, batch_size=2, sampler_name="Euler a")
    assert len(result.images) == 2
    assert result.info["all_seeds"] == [1234, 1235]
    assert result.info["sampler_name"] == "Euler a" and result.info["steps"] == 2
    assert result.parameters["prompt"] == "a red apple"
    assert result.images[0].size == (SIZE, SIZE)
    ours = json.loads(result.images[0].info["imaginairy"])
    assert ours["sampler_type"] == "k_euler_a" and ours["seed"] == 1234 and ours["prompt_strength"] == 5.0
    assert ours["negative_prompt"] == [{"text": "blurry", "weight": 1.0}]
    assert ours["model"] == "tiny"  # the engine id, never the weights file's path
    infotext = result.images[1].info["parameters"]
    assert "Seed: 1235" in infotext and "Model: tiny" in infotext and "/" not in infotext.split("Model:")[1]
    assert result.info["infotexts"][1] == infotext

    again = webui.txt2img(prompt="a red apple", negative_prompt="blurry", seed=1235, steps=2, cfg_scale=5.0,
                          width=SIZE, height=SIZE, sampler_name="Euler a")
    assert np.array_equal(np.asarray(again.image), np.asarray(result.images[1]))


def test_random_seed_is_reported(webui):
    result = webui.txt2img(prompt="a cat", width=SIZE, height=SIZE)
    seed = result.info["seed"]
    assert seed >= 0 and json.loads(result.image.info["imaginairy"])["seed"] == seed


def test_img2img_with_mask_repaints_only_the_white_area(webui):
    init = Image.new("RGB", (SIZE, SIZE), (30, 160, 30))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))  # A1111: white (left half) is repainted, black kept
    result = webui.img2img(images=[init], mask_image=mask, prompt="a flower", denoising_strength=1.0, mask_blur=0,
                           inpainting_fill=1, inpaint_full_res=False, width=SIZE, height=SIZE, seed=9, steps=2)
    out = np.asarray(result.image.convert("RGB"), dtype=float)
    original = np.asarray(init, dtype=float)
    kept = np.abs(out[:, SIZE // 2 + 4:] - original[:, SIZE // 2 + 4:]).max()
    repainted = np.abs(out[:, : SIZE // 2 - 4] - original[:, : SIZE // 2 - 4]).mean()
    assert kept <= 2 and repainted > 10
    ours = json.loads(result.image.info["imaginairy"])
    assert ours["init_image_strength"] == 0.0 and ours["mask_mode"] == "replace"


def test_img2img_inverted_mask_keeps_the_white_area(webui):
    init = Image.new("RGB", (SIZE, SIZE), (200, 40, 40))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    result = webui.img2img(images=[init], mask_image=mask, prompt="a flower", denoising_strength=1.0, mask_blur=0,
                           inpainting_fill=1, inpaint_full_res=False, inpainting_mask_invert=1, width=SIZE,
                           height=SIZE, seed=9, steps=2)
    out = np.asarray(result.image.convert("RGB"), dtype=float)
    assert np.abs(out[:, : SIZE // 2 - 4] - np.asarray(init, dtype=float)[:, : SIZE // 2 - 4]).max() <= 2


def test_inpaint_only_masked_pastes_the_crop_back(webui):
    big = 2 * SIZE
    init = Image.new("RGB", (big, big), (20, 20, 200))
    mask = Image.new("L", (big, big), 0)
    mask.paste(255, (8, 8, 40, 40))
    result = webui.img2img(images=[init], mask_image=mask, prompt="a flower", denoising_strength=1.0, mask_blur=0,
                           inpaint_full_res=True, inpaint_full_res_padding=4, width=big, height=big, seed=3, steps=2)
    out = np.asarray(result.image.convert("RGB"), dtype=float)
    assert result.image.size == (big, big)
    assert np.abs(out[64:, 64:] - 0 - np.asarray(init, dtype=float)[64:, 64:]).max() <= 2  # far from the mask
    assert np.abs(out[12:36, 12:36] - np.asarray(init, dtype=float)[12:36, 12:36]).mean() > 10


def test_img2img_strength_and_size_from_the_init_image(webui):
    init = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    result = webui.img2img(images=[init], prompt="a wall", denoising_strength=0.4, width=SIZE, height=SIZE, seed=2,
                           steps=2)
    ours = json.loads(result.image.info["imaginairy"])
    assert ours["init_image_strength"] == pytest.approx(0.6)
    assert "Denoising strength: 0.4" in result.image.info["parameters"]


def test_progress_with_preview_while_running_then_interrupt(webui, http_api):
    answers = {}

    def run():
        answers["result"] = webui.txt2img(prompt="a slow one", width=SIZE, height=SIZE, steps=LONG_STEPS, seed=4)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: webui.get_progress()["state"]["sampling_step"] >= 3)
    progress = webui.get_progress()
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == LONG_STEPS
    assert progress["state"]["job_count"] >= 1 and progress["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.size == (SIZE // 8, SIZE // 8)  # one preview pixel per latent pixel

    start = time.monotonic()
    webui.interrupt()
    thread.join(CALL_TIMEOUT)
    assert time.monotonic() - start < 10
    assert answers["result"].info["interrupted"] is True
    assert answers["result"].images == []  # the image did not finish: none is sent rather than a half-made one
    wait_for(lambda: webui.get_progress()["state"]["job_count"] == 0)
    assert webui.get_progress()["progress"] == 0


def test_models_options_and_model_switch(webui, http_api):
    titles = webui.util_get_model_names()
    assert titles == sorted(["tiny", "tiny-inpainting", "broken"])
    assert all("/" not in str(model["filename"]) for model in webui.get_sd_models())
    assert webui.util_get_current_model() == "tiny"
    webui.util_set_model("tiny-inpainting", find_closest=False)
    try:
        assert webui.get_options()["sd_model_checkpoint"] == "tiny-inpainting"
        result = webui.txt2img(prompt="x", width=SIZE, height=SIZE, seed=1)
        assert json.loads(result.image.info["imaginairy"])["model"] == "tiny-inpainting"
    finally:
        webui.util_set_model("tiny", find_closest=False)
    assert webui.get_options()["sd_model_checkpoint"] == "tiny"
    unknown = post(http_api, "/sdapi/v1/options", {"sd_model_checkpoint": "nope"})
    assert unknown.status_code == 422 and "nope" in unknown.json()["detail"]


def test_samplers_schedulers_upscalers(webui):
    names = webui.util_get_sampler_names()
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= set(names)
    assert [s["name"] for s in webui.get_schedulers()] == ["automatic"]
    assert "R-ESRGAN 4x+" in [u["name"] for u in webui.get_upscalers()]


def test_png_info_of_our_image_and_of_an_a1111_one(webui):
    result = webui.txt2img(prompt="a lighthouse, at night", negative_prompt="fog", seed=77, width=SIZE, height=SIZE,
                           steps=1)
    info = webui.png_info(result.image)
    parameters = info.json["parameters"]
    assert parameters["Prompt"] == "a lighthouse, at night" and parameters["Negative prompt"] == "fog"
    assert parameters["Seed"] == "77" and parameters["Size-1"] == str(SIZE)
    assert json.loads(info.json["items"]["imaginairy"])["seed"] == 77

    from PIL import PngImagePlugin

    foreign = Image.new("RGB", (8, 8))
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", 'cat\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 5, '
                                'Size: 512x768, Lora hashes: "a: 1, b: 2"')
    buffer = io.BytesIO()
    foreign.save(buffer, format="PNG", pnginfo=text)
    parsed = post(webui_api_of(webui), "/sdapi/v1/png-info",
                  {"image": base64.b64encode(buffer.getvalue()).decode()}).json()["parameters"]
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Size-2"] == "768" and parsed["Lora hashes"] == "a: 1, b: 2"


def webui_api_of(webui):
    class Address:
        http_port = int(webui.baseurl.rsplit(":", 1)[1].split("/")[0])

    return Address


def test_extra_single_image_resizes_and_missing_weights_are_a_clear_503(webui, http_api):
    img = Image.new("RGB", (16, 8), (10, 200, 10))
    result = webui.extra_single_image(img, upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (32, 16)
    assert np.abs(np.asarray(result.image, dtype=float) - [10, 200, 10]).max() <= 1
    missing = post(http_api, "/sdapi/v1/extra-single-image", {"image": b64_png(img), "upscaler_1": "R-ESRGAN 4x+"})
    detail = missing.json()["detail"]
    assert missing.status_code == 503 and "RealESRGAN_x4plus.pth" in detail
    assert "pytest-of" not in detail and "/tmp" not in detail  # the server's cache folder stays on the server


UNSUPPORTED = [
    ("/sdapi/v1/txt2img", {"enable_hr": True}, "enable_hr"),
    ("/sdapi/v1/txt2img", {"subseed_strength": 0.5}, "subseed_strength"),
    ("/sdapi/v1/txt2img", {"styles": ["cinematic"]}, "styles"),
    ("/sdapi/v1/txt2img", {"script_name": "x/y/z plot"}, "script_name"),
    ("/sdapi/v1/txt2img", {"scheduler": "karras"}, "scheduler"),
    ("/sdapi/v1/txt2img", {"sampler_name": "UniPC"}, "sampler_name"),
    ("/sdapi/v1/txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 2}}, "CLIP_stop_at_last_layers"),
    ("/sdapi/v1/txt2img", {"no_such_field": 1}, "no_such_field"),
    ("/sdapi/v1/txt2img", {"width": 100}, "width"),
    ("/sdapi/v1/txt2img", {"steps": 151}, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x" * 9000}, "prompt"),
    ("/sdapi/v1/txt2img", {"batch_size": 11}, "batch_size"),
    ("/sdapi/v1/img2img", {"init_images": ["bm90IGFuIGltYWdl"]}, "init_images[0]"),
    ("/sdapi/v1/img2img", {"init_images": ["***"]}, "base64"),
    ("/sdapi/v1/img2img", {"resize_mode": 2}, "resize_mode"),
    ("/sdapi/v1/img2img", {"inpainting_fill": 2}, "inpainting_fill"),
    ("/sdapi/v1/interrogate", {"model": "deepdanbooru"}, "deepdanbooru"),
    ("/sdapi/v1/extra-single-image", {"gfpgan_visibility": 1}, "gfpgan_visibility"),
]


@pytest.mark.parametrize(("route", "fields", "named"), UNSUPPORTED)
def test_unsupported_fields_are_422_naming_the_field(http_api, route, fields, named):
    body = {"prompt": "a cat", **fields}
    if route == "/sdapi/v1/img2img":
        body.setdefault("init_images", [b64_png(Image.new("RGB", (SIZE, SIZE)))])
        body.setdefault("mask", b64_png(Image.new("L", (SIZE, SIZE), 255)))
    if route in ("/sdapi/v1/interrogate", "/sdapi/v1/extra-single-image"):
        body = {"image": b64_png(Image.new("RGB", (8, 8))), **fields}
    answer = post(http_api, route, body)
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["detail"]


def test_webuiapi_defaults_are_accepted_as_off(http_api):
    """webuiapi sends every field it knows with its own defaults (eta 1, s_noise 1, hires settings, ...)."""
    import webuiapi

    client = webuiapi.WebUIApi(port=http_api.http_port, steps=1)
    client.txt2img(prompt="a dog", width=SIZE, height=SIZE)  # raises on any non-200 answer
    client.img2img(images=[Image.new("RGB", (SIZE, SIZE))], mask_image=Image.new("L", (SIZE, SIZE), 255),
                   prompt="a dog", width=SIZE, height=SIZE)


def test_models_folder_loras_and_embeddings_are_listed_and_loras_used(
    make_server, tiny_loras, tiny_embeddings, tmp_path
):
    import shutil

    import webuiapi

    models_dir = tmp_path / "models"
    (models_dir / "loras").mkdir(parents=True)
    (models_dir / "embeddings").mkdir()
    shutil.copy(tiny_loras["kohya-sd15"], models_dir / "loras" / "add_detail.safetensors")
    shutil.copy(tiny_embeddings["tinycat"], models_dir / "embeddings")
    running = make_server(http_port=0, models_dir=str(models_dir), grpc=False)
    webui = webuiapi.WebUIApi(host="127.0.0.1", port=running.http_port, sampler="Euler", steps=1)

    assert [lora["name"] for lora in webui.get_loras()] == ["add_detail"]
    assert str(tmp_path) not in json.dumps(webui.get_loras())  # names only, never server-side paths
    assert list(webui.get_embeddings()["loaded"]) == ["tinycat"]

    def generate(prompt):
        return webui.txt2img(prompt=prompt, seed=3, steps=2, width=SIZE, height=SIZE)

    plain, with_lora = generate("a tinycat"), generate("a tinycat <lora:add_detail:1>")
    assert not np.array_equal(np.asarray(plain.image), np.asarray(with_lora.image))
    assert 'Lora hashes: "add_detail: ' in with_lora.image.info["parameters"]
