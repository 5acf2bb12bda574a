"""The prompt options of `imagine`: they reach the image's metadata, and bad values are one clear line."""

import pytest
import torch
from click.testing import CliRunner

from imaginairy.cli.imagine import imagine_cmd
from imaginairy.utils.metadata import read_metadata


def run(tiny_models, tmp_path, *args, model="tiny-sd15", prompt="a photo of tinycat"):
    argv = [prompt, "--model", str(tiny_models[model]), "--steps", "2", "--seed", "3", "--outdir",
            str(tmp_path / "out"), "--output-file-extension", "png", *map(str, args)]
    return CliRunner().invoke(imagine_cmd, argv)


def test_prompt_options_reach_the_metadata(tiny_models, tiny_embeddings, tmp_path):
    folder = tiny_embeddings["tinycat"].parent
    result = run(tiny_models, tmp_path, "--prompt-syntax", "plain", "--clip-skip", 2, "--embeddings", folder,
                 "--negative-prompt", "tinyneg")
    assert result.exit_code == 0, result.output
    (image,) = (tmp_path / "out").rglob("*.png")
    metadata = read_metadata(image)
    assert (metadata["prompt_syntax"], metadata["clip_skip"], metadata["embeddings"]) == ("plain", 2, [str(folder)])


@pytest.fixture
def wide_embedding(tmp_path):
    path = tmp_path / "tinycat.pt"
    torch.save({"string_to_param": {"*": torch.ones(1, 768)}, "name": "tinycat"}, path)
    return path


@pytest.mark.parametrize(
    ("args", "model", "mentioned"),
    [
        (["--clip-skip", 0], "tiny-sd15", "--clip-skip"),
        (["--clip-skip", 2], "tiny-sd21-v", "clip_skip 2 does not fit"),
        (["--clip-skip", 3], "tiny-sd15", "it takes 1 to 2"),
        (["--prompt-syntax", "compel"], "tiny-sd15", "--prompt-syntax"),
        (["--embeddings", "{tmp}/missing"], "tiny-sd15", "missing"),
        (["--embeddings", "{wide}"], "tiny-sd15", "768-dimensional vectors; this model's text encoder takes 32"),
    ],
)
def test_bad_prompt_options_are_one_line_with_exit_2(tiny_models, tmp_path, wide_embedding, args, model, mentioned):
    args = [str(arg).format(tmp=tmp_path, wide=wide_embedding) for arg in args]
    result = run(tiny_models, tmp_path, *args, model=model)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert any(mentioned in line for line in result.output.splitlines() if line.startswith("Error")), result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
