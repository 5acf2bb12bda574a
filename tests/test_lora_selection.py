"""Choosing LoRAs: <lora:NAME:WEIGHT> tags, ImaginePrompt(loras=...), --lora, names in the models folder; the
A1111 infotext and JSON record them; every bad input is one clear error."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from click.testing import CliRunner

from imaginairy import ImaginePrompt, imagine
from imaginairy.cli.imagine import imagine_cmd
from imaginairy.errors import InvalidInputError, ModelNotFoundError
from imaginairy.models.cache import ModelCache
from imaginairy.models.library import file_hashes
from imaginairy.prompts.extra_networks import extract_lora_tags
from imaginairy.schema import LoRA
from imaginairy.utils.metadata import a1111_parameters


@pytest.mark.parametrize(("text", "expected_text", "expected_loras"), [
    ("a cat <lora:add_detail:0.5>", "a cat ", [("add_detail", 0.5)]),
    ("<lora:a>, a cat, <lyco:b:-1.25>", ", a cat, ", [("a", 1.0), ("b", -1.25)]),
    ("no tags (word:1.2) <other:x>", "no tags (word:1.2) <other:x>", []),
])  # fmt: skip
def test_tags_are_taken_out_of_the_text(text, expected_text, expected_loras):
    assert extract_lora_tags(text) == (expected_text, expected_loras)


@pytest.mark.parametrize(("text", "message"), [
    ("<lora:x:abc>", "the weight 'abc' is not a number"),
    ("<lora:x:0.5:0.7>", "one weight for the text encoder and the UNet"),
    ("<hypernet:x:1>", "hypernet networks are not supported"),
    ("<lora:x:12>", "LoRA weight must be a number from -10 to 10"),
])  # fmt: skip
def test_bad_tags(text, message):
    with pytest.raises(InvalidInputError, match=message):
        ImaginePrompt(text)


def test_prompt_collects_tags_and_fields():
    prompt = ImaginePrompt("a cat, <lora:add_detail:0.5>", negative_prompt="<lora:bad_hands:-1> blurry",
                           loras=[LoRA("/x/y.safetensors", 2)])
    assert [wp.text for wp in prompt.prompts] == ["a cat,"]
    assert [wp.text for wp in prompt.negative_prompts] == ["blurry"]
    assert prompt.loras == (LoRA("/x/y.safetensors", 2), LoRA("add_detail", 0.5), LoRA("bad_hands", -1))
    assert ImaginePrompt.from_metadata(prompt.to_metadata()) == prompt


@pytest.mark.parametrize("weight", [10.5, -11, float("nan"), "1", True])
def test_lora_weight_is_checked(weight):
    with pytest.raises(InvalidInputError, match="LoRA weight must be a number from -10 to 10"):
        LoRA("x", weight)


@pytest.fixture
def models_dir(tmp_path, tiny_loras):
    root = tmp_path / "models"
    (root / "loras").mkdir(parents=True)
    shutil.copy(tiny_loras["kohya-sd15"], root / "loras" / "add_detail.safetensors")
    return root


def generate(prompt_text, tiny_models, cache, models_dir=None, **kwargs):
    prompt = ImaginePrompt(prompt_text, model=str(tiny_models["tiny-sd15"]), steps=3, seed=5, safety_mode="off",
                           **kwargs)
    return next(imagine(prompt, device="cpu", model_cache=cache, models_dir=models_dir))


def test_tag_by_name_equals_path_field_and_is_recorded(tiny_models, tiny_loras, models_dir):
    cache = ModelCache(max_bytes=2**30)
    prompt = ImaginePrompt("a cat <lora:add_detail:0.5>", model=str(tiny_models["tiny-sd15"]), steps=3, seed=5,
                           safety_mode="off")
    by_name = next(imagine(prompt, device="cpu", model_cache=cache, models_dir=models_dir))
    by_path = generate("a cat", tiny_models, cache, loras=[LoRA(tiny_loras["kohya-sd15"], 0.5)])
    plain = generate("a cat", tiny_models, cache)
    assert by_name.img.tobytes() == by_path.img.tobytes()
    assert by_name.img.tobytes() != plain.img.tobytes()
    assert plain.img.tobytes() == generate("a cat", tiny_models, ModelCache(max_bytes=2**30)).img.tobytes()
    lora_path = models_dir / "loras" / "add_detail.safetensors"
    lora_hash = file_hashes(lora_path).lora_hash
    assert by_name.metadata["lora_files"] == [{"path": str(lora_path.resolve()), "weight": 0.5, "name": "add_detail",
                                                "hash": lora_hash, "sha256": file_hashes(lora_path).sha256}]
    assert by_name.metadata["model_file"]["hash"] == file_hashes(tiny_models["tiny-sd15"]).model_hash
    parameters = a1111_parameters(by_name.metadata)
    assert parameters.splitlines()[0] == "a cat <lora:add_detail:0.5>"
    assert f'Lora hashes: "add_detail: {lora_hash}"' in parameters
    assert f"Model hash: {by_name.metadata['model_file']['hash']}, Model: " in parameters


def test_unknown_lora_name_lists_close_matches(tiny_models, models_dir):
    with pytest.raises(ModelNotFoundError, match="no lora named 'add_detial'.*did you mean add_detail"):
        generate("a cat <lora:add_detial:0.5>", tiny_models, ModelCache(max_bytes=2**30), models_dir=models_dir)


def test_cli_lora_option(tiny_models, tmp_path, models_dir):
    args = ["a cat", "--model", str(tiny_models["tiny-sd15"]), "--steps", "2", "--seed", "1", "--safety-mode", "off",
            "--models-dir", str(models_dir), "--outdir", str(tmp_path / "out"), "--output-file-extension", "png"]
    result = CliRunner().invoke(imagine_cmd, [*args, "--lora", "add_detail:0.7"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from imaginairy.utils.metadata import read_metadata

    [path] = (tmp_path / "out" / "generated").glob("*.png")
    assert read_metadata(path)["loras"][0]["weight"] == 0.7
    for bad, message in [("add_detial", "did you mean add_detail"), ("add_detail:11", "from -10 to 10")]:
        result = CliRunner().invoke(imagine_cmd, [*args, "--lora", bad])
        assert result.exit_code == 2
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    wrong_architecture = tmp_path / "xl.safetensors"
    shutil.copy(models_dir / "loras" / "add_detail.safetensors", wrong_architecture)
    result = CliRunner().invoke(imagine_cmd, [*args, "--model", str(tiny_models["tiny-sd21-v"]),
                                              "--lora", str(wrong_architecture)])
    assert result.exit_code == 2
    assert "is made for SD 1.x models; the model in use is SD 2.x" in result.output


def test_checkpoint_and_vae_by_name_and_vae_in_the_infotext(tmp_path, tiny_models, tiny_variants):
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "vae").mkdir()
    shutil.copy(tiny_models["tiny-sd15"], root / "checkpoints" / "dreamshaper_8.safetensors")
    shutil.copy(tiny_models["tiny-sd15"].with_suffix(".yaml"), root / "checkpoints" / "dreamshaper_8.yaml")
    shutil.copy(tiny_variants["vae"], root / "vae" / "vae-ft-mse.safetensors")
    cache = ModelCache(max_bytes=2**30)
    by_name = next(imagine(ImaginePrompt("a cat", model="dreamshaper_8", vae="vae-ft-mse", steps=2, seed=5,
                                         safety_mode="off"), device="cpu", model_cache=cache, models_dir=root))
    by_path = next(imagine(ImaginePrompt("a cat", model=str(tiny_models["tiny-sd15"]), vae=str(tiny_variants["vae"]),
                                         steps=2, seed=5, safety_mode="off"), device="cpu", model_cache=cache))
    assert by_name.img.tobytes() == by_path.img.tobytes()
    vae_hash = file_hashes(root / "vae" / "vae-ft-mse.safetensors").model_hash
    assert f"VAE hash: {vae_hash}, VAE: vae-ft-mse.safetensors" in a1111_parameters(by_name.metadata)
    assert by_name.metadata["vae_file"]["path"] == str((root / "vae" / "vae-ft-mse.safetensors").resolve())
    with pytest.raises(ModelNotFoundError, match="no vae named 'vae-ft-mse-840000'.*did you mean vae-ft-mse"):
        next(imagine(ImaginePrompt("a cat", model="dreamshaper_8", vae="vae-ft-mse-840000", safety_mode="off"),
                     device="cpu", model_cache=cache, models_dir=root))


def test_embeddings_in_the_models_folder_are_triggered_by_name(tiny_models, tiny_embeddings, models_dir):
    cache = ModelCache(max_bytes=2**30)
    (models_dir / "embeddings").mkdir()
    shutil.copy(tiny_embeddings["tinycat"], models_dir / "embeddings")
    from_folder = generate("a photo of tinycat", tiny_models, cache, models_dir=models_dir)
    by_path = generate("a photo of tinycat", tiny_models, cache, embeddings=[tiny_embeddings["tinycat"]])
    without = generate("a photo of tinycat", tiny_models, cache)
    assert from_folder.img.tobytes() == by_path.img.tobytes()
    assert from_folder.img.tobytes() != without.img.tobytes()
    ti_hash = hashlib.sha256((models_dir / "embeddings" / "tinycat.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "tinycat: {ti_hash}"' in a1111_parameters(from_folder.metadata)
    assert [e["name"] for e in from_folder.metadata["embedding_files"]] == ["tinycat"]
    assert without.metadata["embedding_files"] == [] and "TI hashes" not in a1111_parameters(without.metadata)
