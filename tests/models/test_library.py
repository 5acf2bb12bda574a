"""The models folder: names, close matches, A1111's hashes computed once and read from the cache afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from imaginairy.cli.aimg import aimg
from imaginairy.errors import ModelNotFoundError
from imaginairy.models import library
from imaginairy.models.weights import save_state_dict


@pytest.fixture
def folder(tmp_path, tiny_models, tiny_loras, tiny_variants):
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "loras" / "styles").mkdir(parents=True)
    (root / "vae").mkdir()
    (root / "embeddings").mkdir()
    shutil.copy(tiny_models["tiny-sd15"], root / "checkpoints" / "dreamshaper_8.safetensors")
    shutil.copy(tiny_models["tiny-sd15"].with_suffix(".yaml"), root / "checkpoints" / "dreamshaper_8.yaml")
    shutil.copy(tiny_models["tiny-sd21-v"], root / "checkpoints" / "v2.safetensors")
    shutil.copy(tiny_loras["kohya-sd15"], root / "loras" / "add_detail.safetensors")
    shutil.copy(tiny_loras["peft-sd15"], root / "loras" / "styles" / "Film_Grain.safetensors")
    shutil.copy(tiny_loras["kohya-sdxl"], root / "loras" / "xl_thing.safetensors")
    shutil.copy(tiny_variants["vae"], root / "vae" / "vae-ft-mse.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}, "name": "easynegative"},
               root / "embeddings" / "easynegative.pt")  # A1111's .pt layout
    save_state_dict({"emb_params": torch.zeros(1, 1024)}, root / "embeddings" / "sd2-style.safetensors")
    return root


def test_names_resolve_by_stem_subpath_and_any_case(folder):
    assert library.find("loras", "add_detail", folder) == folder / "loras" / "add_detail.safetensors"
    assert library.find("loras", "film_grain", folder) == folder / "loras" / "styles" / "Film_Grain.safetensors"
    assert library.find("loras", "styles/Film_Grain", folder).name == "Film_Grain.safetensors"
    assert library.find("loras", "add_detail.safetensors", folder).stem == "add_detail"
    assert library.find("checkpoints", "dreamshaper_8", folder).suffix == ".safetensors"
    assert [p.name for p in library.list_files("loras", folder)] == [
        "add_detail.safetensors", "Film_Grain.safetensors", "xl_thing.safetensors"]


def test_unknown_name_lists_close_matches(folder):
    with pytest.raises(ModelNotFoundError, match=r"no lora named 'add_detial' in .*loras; did you mean add_detail"):
        library.find("loras", "add_detial", folder)
    with pytest.raises(ModelNotFoundError, match=r"point --models-dir or IMAGINAIRY_MODELS_DIR"):
        library.find("loras", "add_detail", None)
    with pytest.raises(ModelNotFoundError, match="lora file not found: /nowhere/x.safetensors"):
        library.resolve("loras", "/nowhere/x.safetensors", folder)


def test_models_dir_from_the_environment_once(tmp_path):
    from imaginairy.settings import Settings

    assert Settings.from_environment({library.MODELS_DIR_ENV: str(tmp_path / "env")}).models_dir == str(
        tmp_path / "env"
    )
    assert Settings.from_environment({}).models_dir is None
    assert library.models_dir("~/models") == library.Path("~/models").expanduser()
    assert library.models_dir(None) is None


def test_a1111_hashes(folder):
    checkpoint = folder / "checkpoints" / "dreamshaper_8.safetensors"
    lora = folder / "loras" / "add_detail.safetensors"
    data = lora.read_bytes()
    tensor_data = data[8 + int.from_bytes(data[:8], "little"):]
    assert library.file_hashes(checkpoint).model_hash == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    assert library.file_hashes(lora).lora_hash == hashlib.sha256(tensor_data).hexdigest()[:12]
    assert library.file_hashes(lora).sha256 == hashlib.sha256(data).hexdigest()


def test_hashes_are_read_once_then_cached(folder, monkeypatch):
    lora = folder / "loras" / "add_detail.safetensors"
    reads = []
    real_hash_file = library._hash_file
    monkeypatch.setattr(library, "_hash_file", lambda path: reads.append(path) or real_hash_file(path))
    first = library.file_hashes(lora)
    second = library.file_hashes(lora)
    assert second == first
    assert reads == [lora.resolve()]  # the second call read nothing
    os.utime(lora, ns=(1, 1))  # a changed file (other mtime) is hashed again
    library.file_hashes(lora)
    assert len(reads) == 2


def test_aimg_models_lists_architecture_size_and_hash(folder):
    result = CliRunner().invoke(aimg, ["models", "--models-dir", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    assert "SD 1.x" in lines["dreamshaper_8"]
    assert "SD 2.x" in lines["v2"]
    assert "SD 1.x" in lines["add_detail"] and library.file_hashes(folder / "loras/add_detail.safetensors").lora_hash \
        in lines["add_detail"]
    assert "SD 1.x" in lines["styles/Film_Grain"]
    assert "SDXL" in lines["xl_thing"]
    assert "VAE (CompVis)" in lines["vae-ft-mse"]
    assert "SD 1.x" in lines["easynegative"]
    assert "SD 2.x" in lines["sd2-style"]
