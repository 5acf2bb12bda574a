import dataclasses
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imaginairy.errors import EmbeddingError, ImageLoadError, InvalidInputError, OutputWriteError
from imaginairy.schema import (
    PRECISIONS,
    SAMPLER_TYPES,
    TILE_MODES,
    ImaginePrompt,
    ImagineResult,
    LazyLoadingImage,
    WeightedPrompt,
)
from imaginairy.utils.metadata import read_metadata, read_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "init.png"
    Image.new("RGB", (32, 24), (1, 2, 3)).save(path)
    return path


def test_schema_import_is_light():
    code = (
        "import sys, imaginairy.schema; "
        "heavy = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_sampler_types():
    assert SAMPLER_TYPES == (
        "plms", "ddim", "k_lms", "k_euler", "k_euler_a", "k_heun", "k_dpm_2", "k_dpm_2_a",
        "k_dpmpp_2m", "k_dpmpp_2s_a", "k_dpmpp_sde", "k_dpm_fast", "k_dpm_adaptive", "k_dpmpp_2m_sde", "k_dpmpp_3m_sde",
    )  # fmt: skip


# --- WeightedPrompt ---


def test_weighted_prompt_defaults():
    assert WeightedPrompt("cat") == WeightedPrompt("cat", 1.0)


@pytest.mark.parametrize("weight", [0, 0.0, math.inf, math.nan, "1", True, None])
def test_weighted_prompt_bad_weight(weight):
    message = r"Prompt weight must be a non-zero finite number, got .* for prompt 'cat'"
    with pytest.raises(InvalidInputError, match=message):
        WeightedPrompt("cat", weight)


def test_weighted_prompt_text_must_be_string():
    with pytest.raises(InvalidInputError, match="Prompt text must be a string, got 3"):
        WeightedPrompt(3)


# --- prompt normalisation ---


def test_string_prompt():
    prompt = ImaginePrompt("a cat")
    assert prompt.prompts == [WeightedPrompt("a cat", 1.0)]
    assert prompt.negative_prompts == [WeightedPrompt("")]


def test_no_prompt_is_unconditional():
    assert ImaginePrompt().prompts == [WeightedPrompt("")]
    assert ImaginePrompt("   ").prompts == [WeightedPrompt("")]


def test_prompt_text_is_stripped():
    assert ImaginePrompt("  a cat \n").prompts == [WeightedPrompt("a cat")]


def test_list_of_prompts_and_weights():
    prompt = ImaginePrompt(
        ["a cat", WeightedPrompt("a dog", 0.5)], negative_prompt=["blurry", WeightedPrompt("ugly", 2)]
    )
    assert prompt.prompts == [WeightedPrompt("a cat"), WeightedPrompt("a dog", 0.5)]
    assert prompt.negative_prompts == [WeightedPrompt("blurry"), WeightedPrompt("ugly", 2)]


def test_negative_weights_become_negative_prompts():
    prompt = ImaginePrompt([WeightedPrompt("a cat"), WeightedPrompt("a dog", -0.5)], negative_prompt="blurry")
    assert prompt.prompts == [WeightedPrompt("a cat")]
    assert prompt.negative_prompts == [WeightedPrompt("blurry"), WeightedPrompt("a dog", 0.5)]


def test_only_negative_weights():
    prompt = ImaginePrompt(WeightedPrompt("a dog", -1))
    assert prompt.prompts == [WeightedPrompt("")]
    assert prompt.negative_prompts == [WeightedPrompt("a dog", 1)]


def test_empty_entries_dropped_when_others_exist():
    prompt = ImaginePrompt(["", "a cat", "  "], negative_prompt=["", "blurry"])
    assert prompt.prompts == [WeightedPrompt("a cat")]
    assert prompt.negative_prompts == [WeightedPrompt("blurry")]


def test_negative_prompt_weights_must_be_positive():
    with pytest.raises(InvalidInputError, match=r"negative_prompt weights must be positive .*got \[-1\]"):
        ImaginePrompt("a cat", negative_prompt=WeightedPrompt("dog", -1))


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_bad_prompt_type(field):
    message = f"{field} must be a string, a WeightedPrompt or a list of them; got int 5"
    with pytest.raises(InvalidInputError, match=message):
        ImaginePrompt(**{field: [5]})


def test_normalisation_is_stable_under_replace(image_path):
    prompt = ImaginePrompt([WeightedPrompt("a", 2), WeightedPrompt("b", -1)], init_image=str(image_path), width=100)
    again = dataclasses.replace(prompt)
    assert again == prompt
    assert dataclasses.replace(prompt, steps=5).seed == prompt.seed


# --- defaults ---


# The defaults of the post-processing and editing fields, the same in defaults() and in to_metadata().
ENHANCE_AND_EDIT_DEFAULTS = {
    "fix_faces": False,
    "fix_faces_fidelity": 0.2,
    "upscale": False,
    "caption": False,
    "safety_mode": None,
    "mask_prompt": None,
    "mask_image": None,
    "mask_mode": "replace",
    "mask_modify_original": True,
    "outpaint": None,
    "seamless_boost": 0.0,
    "control_inputs": [],
}
# The text conditioning fields (imaginairy.prompts); the embeddings are a list in the JSON metadata.
TEXT_CONDITIONING_DEFAULTS = {"prompt_syntax": "a1111", "clip_skip": 1}


def test_defaults():
    assert ImaginePrompt.defaults() == {
        "prompt": None,
        "negative_prompt": None,
        "prompt_strength": 7.5,
        "init_image": None,
        "init_image_strength": 0.2,
        "seed": None,
        "steps": 40,
        "width": None,
        "height": None,
        "sampler_type": "k_dpmpp_2m",
        "schedule": "uniform",
        "ddim_eta": 0.0,
        "tile_mode": "",
        "model": None,
        "model_config": None,
        "loras": (),
        "vae": None,
        "precision": "auto",
        "memory_mode": "high",
        **ENHANCE_AND_EDIT_DEFAULTS,
        **TEXT_CONDITIONING_DEFAULTS,
        "embeddings": (),
    }


def test_default_prompt_values():
    prompt = ImaginePrompt("x")
    assert (prompt.steps, prompt.prompt_strength, prompt.sampler_type, prompt.width, prompt.height) == (
        40, 7.5, "k_dpmpp_2m", None, None,
    )  # fmt: skip


# --- seed ---


def test_seed_drawn_at_construction():
    seeds = {ImaginePrompt("x").seed for _ in range(5)}
    assert all(isinstance(seed, int) and 0 <= seed < 2**32 for seed in seeds)
    assert len(seeds) > 1


@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_seed_range_ends(seed):
    assert ImaginePrompt(seed=seed).seed == seed


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "1", True])
def test_bad_seed(seed):
    with pytest.raises(InvalidInputError, match=r"seed must be an integer from 0 to 2\*\*64 - 1, got"):
        ImaginePrompt(seed=seed)


# --- numbers ---


@pytest.mark.parametrize("steps", [1, 1000])
def test_steps_range_ends(steps):
    assert ImaginePrompt(steps=steps).steps == steps


@pytest.mark.parametrize("steps", [0, -3, 1001, 10.0, "40", True])
def test_bad_steps(steps):
    with pytest.raises(InvalidInputError, match=f"steps must be a whole number from 1 to 1000, got {steps!r}"):
        ImaginePrompt(steps=steps)


@pytest.mark.parametrize("strength", [0, 0.5, 100])
def test_prompt_strength_range(strength):
    assert ImaginePrompt(prompt_strength=strength).prompt_strength == strength


@pytest.mark.parametrize("strength", [-0.1, 100.1, math.inf, math.nan, "7"])
def test_bad_prompt_strength(strength):
    with pytest.raises(InvalidInputError, match=r"prompt_strength \(CFG scale\) must be a number from 0 to 100, got"):
        ImaginePrompt(prompt_strength=strength)


@pytest.mark.parametrize("strength", [0, 1, 0.35])
def test_init_image_strength_range(strength):
    assert ImaginePrompt(init_image_strength=strength).init_image_strength == strength


@pytest.mark.parametrize("strength", [-0.01, 1.01, math.nan, "0.5"])
def test_bad_init_image_strength(strength):
    with pytest.raises(InvalidInputError, match="init_image_strength must be a number from 0 to 1, got"):
        ImaginePrompt(init_image_strength=strength)


def test_ddim_eta():
    assert ImaginePrompt(ddim_eta=0.7).ddim_eta == 0.7


@pytest.mark.parametrize("eta", [-0.1, math.inf, "0"])
def test_bad_ddim_eta(eta):
    with pytest.raises(InvalidInputError, match=r"ddim_eta must be a finite number >= 0, got"):
        ImaginePrompt(ddim_eta=eta)


# --- size ---


def test_size_multiple_of_eight_kept():
    prompt = ImaginePrompt(width=64, height=4096)
    assert (prompt.width, prompt.height) == (64, 4096)


def test_size_rounded_down_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="imaginairy.schema"):
        prompt = ImaginePrompt(width=517, height=71)
    assert (prompt.width, prompt.height) == (512, 64)
    assert "width 517 is not a multiple of 8; using 512." in caplog.text
    assert "height 71 is not a multiple of 8; using 64." in caplog.text


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [63, 0, -512, 4097, 8192, 512.0, "512"])
def test_bad_size(field, value):
    message = f"{field} must be a whole number of pixels from 64 to 4096, got {value!r}"
    with pytest.raises(InvalidInputError, match=message):
        ImaginePrompt(**{field: value})


# --- choices ---


@pytest.mark.parametrize("sampler_type", SAMPLER_TYPES)
def test_every_sampler_accepted(sampler_type):
    assert ImaginePrompt(sampler_type=sampler_type).sampler_type == sampler_type


@pytest.mark.parametrize(
    "field, value, allowed",
    [("sampler_type", "k_dpmpp_3m", SAMPLER_TYPES), ("tile_mode", "z", TILE_MODES), ("precision", "fp8", PRECISIONS)],
)
def test_bad_choice(field, value, allowed):
    message = f"{field} {value!r} is not supported; choose one of: " + ", ".join(repr(choice) for choice in allowed)
    with pytest.raises(InvalidInputError) as error:
        ImaginePrompt(**{field: value})
    assert str(error.value) == message + "."


@pytest.mark.parametrize("tile_mode", TILE_MODES)
def test_tile_modes(tile_mode):
    assert ImaginePrompt(tile_mode=tile_mode).tile_mode == tile_mode


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precisions(precision):
    assert ImaginePrompt(precision=precision).precision == precision


# --- model ---


def test_model_name_or_path():
    assert ImaginePrompt(model="sd-2.1").model == "sd-2.1"
    assert ImaginePrompt(model=Path("weights/x.safetensors")).model == "weights/x.safetensors"


@pytest.mark.parametrize("model", ["", "  ", 3])
def test_bad_model(model):
    with pytest.raises(InvalidInputError, match="model must be a model name or a path to a weights file, got"):
        ImaginePrompt(model=model)


def test_model_config_must_exist(tmp_path):
    config = tmp_path / "v1.yaml"
    config.write_text("model: {}")
    assert ImaginePrompt(model_config=config).model_config == str(config)
    message = "model_config must be the path of an existing yaml file, got .*missing.yaml"
    with pytest.raises(InvalidInputError, match=message):
        ImaginePrompt(model_config=str(tmp_path / "missing.yaml"))


# --- init image ---


def test_init_image_from_path(image_path):
    for given in (str(image_path), image_path):
        prompt = ImaginePrompt(init_image=given)
        assert isinstance(prompt.init_image, LazyLoadingImage)
        assert prompt.init_image.filepath == str(image_path)
        assert prompt.init_image.size == (32, 24)


def test_init_image_from_url_is_not_fetched_at_construction():
    prompt = ImaginePrompt(init_image="https://example.invalid/photo.png")
    assert prompt.init_image.url == "https://example.invalid/photo.png"


def test_init_image_from_pil_and_lazy_image(image_path):
    assert ImaginePrompt(init_image=Image.new("RGB", (8, 16))).init_image.size == (8, 16)
    lazy = LazyLoadingImage(filepath=image_path)
    assert ImaginePrompt(init_image=lazy).init_image is lazy


def test_missing_init_image_fails_at_construction(tmp_path):
    with pytest.raises(ImageLoadError, match="Image file not found: .*nope.jpg"):
        ImaginePrompt(init_image=str(tmp_path / "nope.jpg"))


def test_bad_init_image_type():
    message = r"init_image must be a file path, an http\(s\) URL, a PIL image or a LazyLoadingImage; got int"
    with pytest.raises(InvalidInputError, match=message):
        ImaginePrompt(init_image=3)


# --- metadata ---


def test_to_metadata(image_path):
    prompt = ImaginePrompt(
        [WeightedPrompt("a", 2), WeightedPrompt("b", -1)],
        negative_prompt="c",
        init_image=str(image_path),
        seed=9,
        width=512,
    )
    assert prompt.to_metadata() == {
        "prompt": [{"text": "a", "weight": 2.0}],
        "negative_prompt": [{"text": "c", "weight": 1.0}, {"text": "b", "weight": 1.0}],
        "prompt_strength": 7.5,
        "init_image": str(image_path),
        "init_image_strength": 0.2,
        "seed": 9,
        "steps": 40,
        "width": 512,
        "height": None,
        "sampler_type": "k_dpmpp_2m",
        "schedule": "uniform",
        "ddim_eta": 0.0,
        "tile_mode": "",
        "model": "sd-1.5",
        "model_config": None,
        "loras": [],
        "vae": None,
        "precision": "auto",
        **ENHANCE_AND_EDIT_DEFAULTS,
        **TEXT_CONDITIONING_DEFAULTS,
        "embeddings": [],
    }


def test_metadata_rebuilds_the_same_prompt(tmp_path):
    (tmp_path / "easynegative.pt").write_bytes(b"x")
    prompt = ImaginePrompt([WeightedPrompt("a", 2), WeightedPrompt("b", -1)], negative_prompt="c", seed=9, steps=7,
                           prompt_syntax="plain", clip_skip=2, embeddings=[tmp_path, tmp_path / "easynegative.pt"])
    assert ImaginePrompt(**prompt.to_metadata()) == prompt
    assert ImaginePrompt.from_metadata(prompt.to_metadata()) == prompt


def test_saved_file_metadata_rebuilds_the_prompt(tmp_path):
    prompt = ImaginePrompt("a cat", negative_prompt="dog", seed=4, width=64, height=72, sampler_type="ddim")
    path = ImagineResult({"generated": Image.new("RGB", (64, 72))}, prompt).save(tmp_path / "cat.png")
    assert ImaginePrompt.from_metadata(read_metadata(path)) == prompt


# --- ImagineResult ---


@pytest.fixture
def result():
    prompt = ImaginePrompt("a scenic landscape", seed=557988237, sampler_type="plms", steps=40)
    images = {"generated": Image.new("RGB", (64, 48), "blue"), "upscaled": Image.new("RGB", (128, 96), "blue")}
    return ImagineResult(images, prompt)


def test_result_main_image_is_the_last_step_and_metadata_describes_the_generated_one(result):
    assert result.img is result.images["upscaled"]
    assert result.final_kind == "upscaled"
    assert result.image is result.img
    assert result.metadata["seed"] == 557988237
    assert (result.metadata["width"], result.metadata["height"]) == (64, 48)


def test_result_needs_generated_image():
    with pytest.raises(ValueError, match=r"needs a 'generated' image; got kinds \['upscaled'\]"):
        ImagineResult({"upscaled": Image.new("RGB", (8, 8))}, ImaginePrompt())


def test_result_save_embeds_metadata(result, tmp_path):
    path = result.save(tmp_path / "out.png")
    assert path == tmp_path / "out.png"
    assert Image.open(path).size == (128, 96)  # the final (upscaled) image
    assert Image.open(result.save(tmp_path / "raw.png", image_type="generated")).size == (64, 48)
    assert read_metadata(path) == result.metadata
    assert read_parameters(path).startswith(
        "a scenic landscape\nSteps: 40, Sampler: PLMS, CFG scale: 7.5, Seed: 557988237"
    )


def test_result_save_other_kind(result, tmp_path):
    path = result.save(tmp_path / "up.jpg", image_type="upscaled")
    with Image.open(path) as img:
        assert img.size == (128, 96)
    assert read_metadata(path) == result.metadata


def test_result_save_never_overwrites(result, tmp_path):
    path = tmp_path / "out.jpg"
    path.write_bytes(b"original")
    with pytest.raises(OutputWriteError, match="Not overwriting existing file"):
        result.save(path)
    assert path.read_bytes() == b"original"


def test_result_save_unknown_kind(result, tmp_path):
    with pytest.raises(InvalidInputError, match="No 'face_fixed' image in this result; it has: generated, upscaled"):
        result.save(tmp_path / "x.png", image_type="face_fixed")



# --- text conditioning ---


@pytest.mark.parametrize("clip_skip", [0, 13, 1.5, True, "2"])
def test_clip_skip_out_of_range_is_refused(clip_skip):
    with pytest.raises(InvalidInputError, match="clip_skip must be a whole number from 1"):
        ImaginePrompt("x", clip_skip=clip_skip)


def test_unknown_prompt_syntax_is_refused():
    with pytest.raises(InvalidInputError, match="prompt_syntax 'compel' is not supported; choose one of: 'a1111'"):
        ImaginePrompt("x", prompt_syntax="compel")


def test_embedding_paths_are_normalised_and_checked(tmp_path):
    assert ImaginePrompt("x", embeddings=tmp_path).embeddings == (str(tmp_path),)
    with pytest.raises(EmbeddingError, match="Embedding path not found: .*missing.pt"):
        ImaginePrompt("x", embeddings=[tmp_path / "missing.pt"])
    with pytest.raises(InvalidInputError, match="embeddings must be a path or a list of paths"):
        ImaginePrompt("x", embeddings=[3])


@pytest.mark.parametrize(("model", "expected"), [
    ("sdxl-turbo", {"steps": 1, "prompt_strength": 0.0, "sampler_type": "k_euler_a"}),
    ("sd-turbo", {"steps": 1, "prompt_strength": 0.0, "sampler_type": "k_euler_a"}),
    ("sd-1.5", {"steps": 40, "prompt_strength": 7.5, "sampler_type": "k_dpmpp_2m"}),
    (None, {"steps": 40, "prompt_strength": 7.5, "sampler_type": "k_dpmpp_2m"}),
])  # fmt: skip
def test_unset_steps_guidance_and_sampler_come_from_the_model(model, expected):
    prompt = ImaginePrompt("a fox", model=model)
    assert {name: getattr(prompt, name) for name in expected} == expected
    explicit = ImaginePrompt("a fox", model=model, steps=4, prompt_strength=1.5, sampler_type="ddim")
    assert (explicit.steps, explicit.prompt_strength, explicit.sampler_type) == (4, 1.5, "ddim")
