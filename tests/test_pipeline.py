"""The whole text-to-image and image-to-image path on the tiny models, checked against diffusers and itself."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from imaginairy import ImaginePrompt, WeightedPrompt, imagine, pipeline
from imaginairy.errors import GenerationCancelled
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_bytes=2**30)


def run(prompt: ImaginePrompt, cache, **kwargs):
    return next(imagine(prompt, device="cpu", model_cache=cache, **kwargs))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("sampler_type", ["ddim", "k_euler_a", "k_dpmpp_sde"])
def test_same_seed_same_image_bit_for_bit(tiny_models, cache, sampler_type):
    prompt = dict(prompt="a dog", model=str(tiny_models["tiny-sd15"]), steps=4, sampler_type=sampler_type)
    first = run(ImaginePrompt(**prompt, seed=3), cache).img
    second = run(ImaginePrompt(**prompt, seed=3), cache).img
    other_seed = run(ImaginePrompt(**prompt, seed=4), cache).img
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() != other_seed.tobytes()


def test_seed_near_two_to_the_64_works(tiny_models, cache):
    result = run(ImaginePrompt("a dog", model=str(tiny_models["tiny-sd15"]), steps=2, seed=2**64 - 1), cache)
    assert result.metadata["seed"] == 2**64 - 1


def test_default_size_comes_from_the_model_and_sizes_are_honoured(tiny_models, cache):
    model = str(tiny_models["tiny-sd15"])
    assert run(ImaginePrompt("a", model=model, steps=2, seed=1), cache).img.size == (64, 64)
    result = run(ImaginePrompt("a", model=model, steps=2, seed=1, width=96, height=72), cache)
    assert result.img.size == (96, 72)
    assert (result.metadata["width"], result.metadata["height"]) == (96, 72)


def test_prompt_text_and_weights_change_the_image(tiny_models, cache):
    model = str(tiny_models["tiny-sd15"])
    base = dict(model=model, steps=3, seed=5, sampler_type="ddim")
    cat = run(ImaginePrompt("cat", **base), cache).img
    dog = run(ImaginePrompt("dog", **base), cache).img
    blend = run(ImaginePrompt([WeightedPrompt("cat", 1), WeightedPrompt("dog", 1)], **base), cache).img
    negative = run(ImaginePrompt("cat", negative_prompt="dog", **base), cache).img
    images = [cat.tobytes(), dog.tobytes(), blend.tobytes(), negative.tobytes()]
    assert len(set(images)) == 4


def test_weighted_embedding_is_the_weighted_mean(tiny_models, cache):
    prompt = ImaginePrompt([WeightedPrompt("cat", 3), WeightedPrompt("dog", 1)], model=str(tiny_models["tiny-sd15"]),
                           precision="full")
    model = load_model(prompt, "cpu", cache)
    cat, dog = model.encode_text(["cat", "dog"])
    blended = pipeline.text_conditioning(prompt, model, "cpu")[0].context
    torch.testing.assert_close(blended[0], (3 * cat + dog) / 4)


def test_sd21_v_model_generates_at_its_size(tiny_models, cache):
    result = run(ImaginePrompt("a castle", model=str(tiny_models["tiny-sd21-v"]), steps=3, seed=1), cache)
    assert result.img.size == (64, 64)
    assert np.asarray(result.img).std() > 1  # not a flat image


def test_ckpt_and_safetensors_give_the_same_image(tiny_models, cache):
    safetensors_path = tiny_models["tiny-sd15"]
    ckpt_path = safetensors_path.with_suffix(".ckpt")
    settings = dict(prompt="a dog", steps=3, seed=9, sampler_type="k_euler")
    from_safetensors = run(ImaginePrompt(**settings, model=str(safetensors_path)), cache).img
    from_ckpt = run(ImaginePrompt(**settings, model=str(ckpt_path)), cache).img
    assert from_safetensors.tobytes() == from_ckpt.tobytes()


@pytest.fixture
def init_image(tmp_path):
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    path = tmp_path / "init.png"
    Image.fromarray(gradient).save(path)
    return path


def test_img2img_strength_one_returns_the_init_image(tiny_models, cache, init_image):
    result = run(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), init_image=str(init_image),
                               init_image_strength=1.0, steps=4, seed=1), cache)
    assert result.img.tobytes() == Image.open(init_image).convert("RGB").tobytes()


def test_img2img_strength_zero_ignores_the_init_image(tiny_models, cache, init_image):
    settings = dict(prompt="x", model=str(tiny_models["tiny-sd15"]), steps=4, seed=1, sampler_type="ddim")
    with_init = run(ImaginePrompt(**settings, init_image=str(init_image), init_image_strength=0.0), cache).img
    without = run(ImaginePrompt(**settings), cache).img
    assert with_init.tobytes() == without.tobytes()


@pytest.mark.parametrize("sampler_type", ["ddim", "plms", "k_euler", "k_dpmpp_2m"])
def test_img2img_keeps_more_of_the_init_the_higher_the_strength(tiny_models, cache, init_image, sampler_type):
    """Measured in latent space: a random-weight VAE's decoding does not resemble its input, its latents do."""
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full"), "cpu", cache)
    image = Image.open(init_image).convert("RGB")
    with torch.inference_mode():
        init_latent = model.encode_image(pipeline.pil_to_tensor(image))

    def distance_from_init(strength, **kwargs):
        prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=8, seed=1, sampler_type=sampler_type,
                               init_image=str(init_image), init_image_strength=strength, width=64, height=64)
        latent = pipeline.generate_latent(prompt, model, **kwargs)  # the prompt's init image, scaled to 64x64
        return (latent - init_latent).abs().mean().item()

    steps_seen = []
    half = distance_from_init(0.5, progress_callback=lambda step, total, latents: steps_seen.append((step, total)))
    assert steps_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert distance_from_init(0.875) < half < distance_from_init(0.01)


def test_img2img_from_url(tiny_models, cache, init_image, http_server):
    base_url, root = http_server
    (root / "init.png").write_bytes(init_image.read_bytes())
    settings = dict(prompt="x", model=str(tiny_models["tiny-sd15"]), steps=4, seed=1, init_image_strength=0.5)
    from_url = run(ImaginePrompt(**settings, init_image=f"{base_url}/init.png"), cache).img
    from_file = run(ImaginePrompt(**settings, init_image=str(init_image)), cache).img
    assert from_url.tobytes() == from_file.tobytes()


def rolled_noise_latent(prompt, model, shift):
    """Final latent of a run whose initial noise is the seed's noise rolled `shift` latent pixels to the right."""
    original = pipeline.initial_noise

    def rolled(generator, width, height):
        return torch.roll(original(generator, width, height), shifts=shift, dims=-1)

    pipeline.initial_noise = rolled
    try:
        return pipeline.generate_latent(pipeline.resolve_size(prompt, model), model)
    finally:
        pipeline.initial_noise = original


@pytest.mark.parametrize("tile_mode", ["x", "xy"])
def test_tile_mode_makes_the_image_wrap_around(tiny_models, cache, tile_mode):
    """In tile mode every convolution pads circularly, so the whole model commutes with rolling the canvas: the
    image generated from rolled noise is the rolled image. That is what makes the left and right edges continue
    into each other. Without tile mode the borders break the symmetry."""
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full"), "cpu", cache)
    shift = 2  # latent pixels; a multiple of the UNet's total downsampling (2 levels -> 2)
    settings = dict(prompt="a wall", model=str(tiny_models["tiny-sd15"]), steps=3, seed=2, sampler_type="ddim",
                    precision="full")
    for mode, should_commute in ((tile_mode, True), ("", False)):
        prompt = ImaginePrompt(**settings, tile_mode=mode)
        plain = rolled_noise_latent(prompt, model, 0)
        rolled = rolled_noise_latent(prompt, model, shift)
        commutes = torch.allclose(torch.roll(plain, shifts=shift, dims=-1), rolled, atol=1e-4)
        assert commutes == should_commute, mode
    with torch.inference_mode():
        pipeline.set_tile_mode(model, tile_mode)
        image = model.decode_latent(torch.roll(plain, shifts=shift, dims=-1))
        image_rolled = torch.roll(model.decode_latent(plain), shifts=shift * 8, dims=-1)
    torch.testing.assert_close(image, image_rolled, atol=1e-4, rtol=1e-4)


def test_cancel_event_stops_between_steps(tiny_models, cache):
    stop = threading.Event()
    seen = []

    def progress(step, total, latents):
        seen.append(step)
        if step == 2:
            stop.set()

    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=6, seed=1, sampler_type="ddim")
    with pytest.raises(GenerationCancelled):
        run(prompt, cache, progress_callback=progress, cancel_event=stop)
    assert seen == [1, 2]


def test_progress_callback_returning_true_stops(tiny_models, cache):
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=6, seed=1, sampler_type="k_euler")
    seen = []

    def progress(step, total, latents):
        seen.append((step, total, tuple(latents.shape)))
        return step == 3

    with pytest.raises(GenerationCancelled):
        run(prompt, cache, progress_callback=progress)
    assert seen == [(1, 6, (1, 4, 8, 8)), (2, 6, (1, 4, 8, 8)), (3, 6, (1, 4, 8, 8))]


def test_switching_models_respects_the_cache_budget(tiny_models):
    small_cache = ModelCache(max_bytes=1)  # room for one model at a time
    first = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=2, seed=1)
    second = ImaginePrompt("x", model=str(tiny_models["tiny-sd21-v"]), steps=2, seed=1)
    results = list(imagine([first, second], device="cpu", model_cache=small_cache))
    assert [r.metadata["model"] for r in results] == [first.model, second.model]
    assert len(small_cache) == 1
    roomy_cache = ModelCache(max_bytes=2**30)
    list(imagine([first, second], device="cpu", model_cache=roomy_cache))
    assert len(roomy_cache) == 2


def test_a_model_that_does_not_fit_beside_the_loaded_one_replaces_it_before_loading(tiny_models):
    """The budget holds one tiny model: the first is unloaded before the second loads, never both at once."""
    from imaginairy.models.cache import module_bytes

    first = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1, seed=1, precision="full")
    second = ImaginePrompt("x", model=str(tiny_models["tiny-sd21-v"]), steps=1, seed=1, precision="full")
    one_model = ModelCache(max_bytes=2**40)
    loaded = load_model(first, "cpu", one_model)
    budget = int(tiny_models["tiny-sd21-v"].stat().st_size * 1.5)
    assert module_bytes(loaded) < budget
    cache = ModelCache(max_bytes=budget)
    load_model(first, "cpu", cache)
    sizes_at_load = []
    original_get = cache.get

    def spying_get(key, load, expected_bytes=0):
        return original_get(key, lambda: sizes_at_load.append(len(cache)) or load(), expected_bytes)

    cache.get = spying_get
    load_model(second, "cpu", cache)
    assert sizes_at_load == [0] and len(cache) == 1


def test_unknown_device_name_is_a_usage_error(tiny_models, monkeypatch):
    from imaginairy.errors import InvalidInputError

    monkeypatch.setenv("IMAGINAIRY_DEVICE", "gpu")
    with pytest.raises(InvalidInputError, match="IMAGINAIRY_DEVICE='gpu' is not a torch device"):
        next(imagine(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1)))
    with pytest.raises(InvalidInputError, match="device='gpu'"):
        next(imagine(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1), device="gpu"))


def test_the_prompts_schedule_reaches_the_sampler(tiny_models, cache):
    """The schedule changes the latent, and an A1111 name gives the latent of the sampler and schedule it names."""
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full"), "cpu", cache)

    def latent(**settings):
        prompt = ImaginePrompt("a hill", model=str(tiny_models["tiny-sd15"]), steps=4, seed=6, precision="full",
                               **settings)
        return pipeline.generate_latent(pipeline.resolve_size(prompt, model), model)

    karras = latent(sampler_type="k_dpmpp_2m", schedule="karras")
    assert torch.equal(latent(sampler_type="DPM++ 2M Karras"), karras)
    assert not torch.allclose(karras, latent(sampler_type="k_dpmpp_2m"), atol=1e-3)


def test_large_images_are_encoded_and_decoded_by_the_vae_in_tiles(tiny_models, cache, monkeypatch):
    """Above 1024 px a side (128 latent pixels) both VAE directions run in tiles; at 64 px neither does."""
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full"), "cpu", cache)
    calls = []
    encode, decode = model.encode_image, model.decode_latent
    monkeypatch.setattr(model, "encode_image", lambda pixels, tiled=False: calls.append(("encode", tiled)) or
                        encode(pixels, tiled=tiled))
    monkeypatch.setattr(model, "decode_latent", lambda latent, tiled=False: calls.append(("decode", tiled)) or
                        decode(latent, tiled=tiled))
    for width, tiled in ((1088, True), (64, False)):
        calls.clear()
        init = Image.new("RGB", (width, 64), "gray")
        prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=2, seed=1, width=width, height=64,
                               init_image=init, init_image_strength=0.5, precision="full", safety_mode="off")
        pipeline.generate(prompt, model, device=torch.device("cpu"))
        assert calls == [("encode", tiled), ("decode", tiled)], width


@pytest.fixture(scope="module")
def nan_weights_model(tiny_models, tmp_path_factory):
    """tiny-sd15 with one UNet weight set to NaN, as a broken download or a bad merge leaves it."""
    from imaginairy.models.weights import load_state_dict, save_state_dict

    state_dict = {k: v.clone() for k, v in load_state_dict(tiny_models["tiny-sd15"]).items()}
    state_dict["model.diffusion_model.out.2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan-weights.safetensors"
    save_state_dict(state_dict, path)
    path.with_suffix(".yaml").write_text(tiny_models["tiny-sd15"].with_suffix(".yaml").read_text())
    return path


def test_nan_weights_fail_naming_the_broken_file_instead_of_a_black_image(nan_weights_model, tmp_path):
    from click.testing import CliRunner

    from imaginairy.cli.imagine import imagine_cmd

    result = CliRunner().invoke(imagine_cmd, ["a dog", "--model", str(nan_weights_model), "--steps", "2",
                                              "--outdir", str(tmp_path / "out"), "--safety-mode", "off"])
    assert result.exit_code == 1, result.output
    assert ("Error: the latent came out as NaN/inf, so no image was saved: the weights hold NaN/inf values (first in"
            f" model.diffusion_model.out.2.weight): the model file {nan_weights_model} is broken") in result.output
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.parametrize(
    ("precision", "advice"),
    [
        ("fp16", "fp16 overflowed: try --precision bf16 or --precision full"),
        ("full", "full arithmetic overflowed: try --precision full"),
    ],
)
def test_non_finite_pixels_from_finite_weights_suggest_another_precision(tiny_models, cache, precision, advice):
    from imaginairy.errors import NonFiniteOutputError

    prompt = ImaginePrompt("a dog", model=str(tiny_models["tiny-sd15"]), precision=precision)
    model = load_model(ImaginePrompt("a dog", model=str(tiny_models["tiny-sd15"])), "cpu", cache)
    pixels_with_inf = torch.zeros(1, 3, 8, 8)
    pixels_with_inf[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteOutputError, match=f"the pixels came out as NaN/inf, so no image was saved: {advice}"):
        pipeline.check_finite(model, prompt, latent=torch.zeros(1, 4, 1, 1), pixels=pixels_with_inf)
