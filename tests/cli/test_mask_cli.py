"""The `imagine` mask and outpaint options: end to end on the tiny model, and bad input as usage errors."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imaginairy.cli.imagine import imagine_cmd


def invoke(*args):
    return CliRunner().invoke(imagine_cmd, [str(a) for a in args], catch_exceptions=False)


def written_files(outdir):
    return sorted(p for p in outdir.rglob("*") if p.is_file()) if outdir.exists() else []


@pytest.fixture
def images(tmp_path):
    init = Image.fromarray((np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    init.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    return tmp_path / "init.png", tmp_path / "mask.png"


def test_mask_image_saves_the_modified_original_and_the_masks(tiny_models, tmp_path, images):
    init, mask = images
    outdir = tmp_path / "out"
    result = invoke("a cat", "--init-image", init, "--mask-image", mask, "--mask-mode", "replace", "--model",
                    tiny_models["tiny-sd15"], "--steps", 2, "--seed", 1, "--outdir", outdir,
                    "--output-file-extension", "png", "--safety-mode", "off")
    assert result.exit_code == 0, result.output
    kinds = {path.parent.name for path in written_files(outdir)}
    assert kinds == {"generated", "modified_original", "mask_binary", "mask_grayscale"}
    (modified,) = (outdir / "modified_original").iterdir()
    out, original = np.asarray(Image.open(modified).convert("RGB")), np.asarray(Image.open(init).convert("RGB"))
    outside = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(out[outside], original[outside])


def test_no_mask_modify_original(tiny_models, tmp_path, images):
    init, mask = images
    outdir = tmp_path / "out"
    result = invoke("a cat", "--init-image", init, "--mask-image", mask, "--no-mask-modify-original", "--mask-mode",
                    "keep", "--model", tiny_models["tiny-sd15"], "--steps", 2, "--outdir", outdir,
                    "--safety-mode", "off")
    assert result.exit_code == 0, result.output
    assert {path.parent.name for path in written_files(outdir)} == {"generated", "mask_binary", "mask_grayscale"}


def test_outpaint(tiny_models, tmp_path, images):
    init, _ = images
    outdir = tmp_path / "out"
    result = invoke("a cat", "--init-image", init, "--outpaint", "left16,up8", "--seamless-boost", 0.5,
                    "--init-image-strength", 0, "--model", tiny_models["tiny-sd15"], "--steps", 2,
                    "--outdir", outdir, "--safety-mode", "off")
    assert result.exit_code == 0, result.output
    (modified,) = (outdir / "modified_original").iterdir()
    assert Image.open(modified).size == (80, 72)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mask-prompt", "fruit"], "mask_prompt edits an init image"),
        (["--mask-image", "{mask}"], "mask_image edits an init image"),
        (["--init-image", "{init}", "--outpaint", "all100,sideways5"], "'sideways5'"),
        (["--init-image", "{init}", "--mask-prompt", "fruit AND"], "column"),
        (["--init-image", "{init}", "--mask-prompt", "fruit", "--mask-image", "{mask}"], "not both"),
        (["--init-image", "{init}", "--mask-image", "{mask}", "--mask-mode", "invert"], "invert"),
        (["--init-image", "{init}", "--seamless-boost", "3"], "seamless_boost"),
    ],
)
def test_bad_mask_input_is_a_usage_error_and_writes_nothing(tiny_models, tmp_path, images, args, message):
    init, mask = images
    outdir = tmp_path / "out"
    args = [arg.format(init=init, mask=mask) for arg in args]
    result = invoke("a cat", *args, "--model", tiny_models["tiny-sd15"], "--steps", 1, "--outdir", outdir)
    assert result.exit_code == 2
    assert message in result.output
    assert written_files(outdir) == []


def test_empty_mask_exits_2_and_writes_nothing(tiny_models, tmp_path, images):
    init, _ = images
    black = tmp_path / "black.png"
    Image.new("L", (64, 64), 0).save(black)
    outdir = tmp_path / "out"
    result = invoke("a cat", "--init-image", init, "--mask-image", black, "--model", tiny_models["tiny-sd15"],
                    "--steps", 1, "--outdir", outdir, "--safety-mode", "off")
    assert result.exit_code == 2
    assert "nothing was generated" in result.output
    assert written_files(outdir) == []


def test_help_lists_the_mask_options():
    result = CliRunner().invoke(imagine_cmd, ["--help"])
    for option in ("--mask-prompt", "--mask-image", "--mask-mode", "--mask-modify-original / --no-mask-modify-original",
                   "--outpaint", "--seamless-boost"):
        assert option in result.output


@pytest.mark.parametrize(("option", "message"), [("--mask-prompt", "mask_prompt is empty"),
                                                 ("--outpaint", "outpaint must be a spec like")])
def test_an_empty_mask_prompt_or_outpaint_is_a_usage_error_not_ignored(option, message, tiny_models, tmp_path, images):
    result = CliRunner().invoke(imagine_cmd, ["a cat", "--init-image", str(images[0]), option, "  ", "--model",
                                              str(tiny_models["tiny-sd15"]), "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"Error: {message}" in result.output
    assert written_files(tmp_path / "out") == []


def test_outpaint_summary_names_the_size_generated_and_its_metadata_reproduces_it(tiny_models, tmp_path, images):
    """64x64 grown by 3 px left and 5 px up is a 67x69 canvas, generated at 72x72; the saved metadata, fed back,
    makes the same image."""
    from imaginairy import ImaginePrompt, imagine
    from imaginairy.utils.metadata import read_metadata

    outdir = tmp_path / "out"
    result = invoke("a cat", "--init-image", images[0], "--outpaint", "left3,up5", "--model",
                    tiny_models["tiny-sd15-inpainting"], "--steps", 2, "--seed", 1, "--outdir", outdir,
                    "--output-file-extension", "png", "--safety-mode", "off")
    assert result.exit_code == 0, result.output
    assert '"a cat" 72x72px seed:1' in result.output
    (generated,) = (outdir / "generated").iterdir()
    metadata = read_metadata(generated)
    assert (metadata["width"], metadata["height"]) == (72, 72)
    again = next(imagine(ImaginePrompt.from_metadata(metadata), device="cpu"))
    assert again.images["generated"].tobytes() == Image.open(generated).convert("RGB").tobytes()


def test_adaptive_sampler_files_are_not_named_with_a_step_count(tiny_models, tmp_path):
    outdir = tmp_path / "out"
    result = invoke("a dog", "--model", tiny_models["tiny-sd15"], "--sampler-type", "k_dpm_adaptive", "--steps", 5,
                    "--seed", 2, "--outdir", outdir, "--safety-mode", "off")
    assert result.exit_code == 0, result.output
    assert [p.name for p in written_files(outdir)] == ["000001_2_KDPMADAPTIVE_PS7.5_a_dog.jpg"]
    assert "steps:adaptive sampler-type:k_dpm_adaptive" in result.output
