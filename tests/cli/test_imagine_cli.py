"""The `imagine` command end to end on the tiny model, and its answers to bad input."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from imaginairy.cli.imagine import imagine_cmd
from imaginairy.schema import ImaginePrompt
from imaginairy.utils.metadata import read_metadata, read_parameters

IMAGINE_BIN = Path(sys.executable).parent / "imagine"


def invoke(*args):
    return CliRunner().invoke(imagine_cmd, [str(a) for a in args], catch_exceptions=False)


def written_files(outdir: Path) -> list[Path]:
    return sorted(p for p in outdir.rglob("*") if p.is_file()) if outdir.exists() else []


def test_generates_numbered_files_with_metadata(tiny_models, tmp_path):
    outdir = tmp_path / "out"
    result = invoke("a scenic landscape", "a dog", "--model", tiny_models["tiny-sd15"], "--steps", 3, "--seed", 7,
                    "-r", 2, "--sampler-type", "ddim", "--outdir", outdir, "--output-file-extension", "png")
    assert result.exit_code == 0, result.output
    files = written_files(outdir)
    assert [f.name for f in files] == [
        "000001_7_DDIM3_PS7.5_a_scenic_landscape.png",
        "000002_8_DDIM3_PS7.5_a_scenic_landscape.png",
        "000003_7_DDIM3_PS7.5_a_dog.png",
        "000004_8_DDIM3_PS7.5_a_dog.png",
    ]
    assert all(f.parent == outdir / "generated" for f in files)
    metadata = read_metadata(files[0])
    assert metadata["seed"] == 7 and metadata["steps"] == 3 and metadata["sampler_type"] == "ddim"
    assert read_parameters(files[2]).startswith("a dog\nSteps: 3, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 64x64")


def test_second_run_never_overwrites(tiny_models, tmp_path):
    args = ("a dog", "--model", tiny_models["tiny-sd15"], "--steps", 2, "--seed", 1, "--outdir", tmp_path)
    assert invoke(*args).exit_code == 0
    first = written_files(tmp_path)
    first_bytes = first[0].read_bytes()
    assert invoke(*args).exit_code == 0
    files = written_files(tmp_path)
    assert len(files) == 2 and files[0].read_bytes() == first_bytes
    assert re.match(r"000002_1_KDPMPP2M2_PS7.5_a_dog\.jpg", files[1].name)


def test_summary_line(tiny_models, tmp_path):
    result = CliRunner().invoke(imagine_cmd, ["a dog", "--model", str(tiny_models["tiny-sd15"]), "--steps", "2",
                                              "--seed", "1", "--outdir", str(tmp_path), "-w", "64", "-h", "64"])
    assert result.exit_code == 0
    assert 'Generating 🖼 : "a dog" 64x64px seed:1 prompt-strength:7.5 steps:2 sampler-type:k_dpmpp_2m' in result.output


def test_no_prompt_is_a_usage_error():
    result = CliRunner().invoke(imagine_cmd, [])
    assert result.exit_code == 2
    assert "give at least one prompt" in result.output


@pytest.fixture
def corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return path


@pytest.fixture
def bad_model_files(tmp_path, tiny_models):
    """Weights and configs that used to end in a traceback: random bytes, a header length of 2**60, a config without
    `z_channels`, a text encoder layer that does not exist."""
    import random

    (tmp_path / "random.safetensors").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "huge-header.safetensors").write_bytes((2**60).to_bytes(8, "little") + b"{" + b" " * 100)
    sd15_config = tiny_models["tiny-sd15"].with_suffix(".yaml").read_text()
    (tmp_path / "no-z.yaml").write_text(
        "".join(line for line in sd15_config.splitlines(True) if "z_channels" not in line)
    )
    sd21_config = tiny_models["tiny-sd21-v"].with_suffix(".yaml").read_text()
    assert "layer: penultimate" in sd21_config
    (tmp_path / "pooled.yaml").write_text(sd21_config.replace("layer: penultimate", "layer: pooled"))


BAD_INPUTS = {
    "missing init image": (["--init-image", "{tmp}/nope.jpg"], 2, "nope.jpg"),
    "unknown sampler": (["--sampler-type", "k_wrong"], 2, "k_wrong"),
    "unknown model": (["--model", "sd-9"], 2, "unknown model 'sd-9'"),
    "missing model file": (["--model", "{tmp}/missing.safetensors"], 2, "missing.safetensors"),
    "zero steps": (["--steps", "0"], 2, "steps"),
    "strength above one": (["--init-image-strength", "1.5"], 2, "init_image_strength"),
    "absurd width": (["-w", "100000"], 2, "width"),
    "negative seed": (["--seed", "-1"], 2, "seed"),
    "corrupt checkpoint": (["--model", "{corrupt}"], 1, "corrupt.safetensors"),
    "wrong architecture": (["--model-config", "{repo}/imaginairy/configs/sd-v2.yaml"], 1, "does not fit"),
    "unwritable outdir": (["--outdir", "{tmp}/a-file/out"], 1, "a-file"),
    "init image url fails": (["--init-image", "{url}/missing.png"], 1, "404"),
    "random bytes as safetensors": (["--model", "{tmp}/random.safetensors"], 1, "header length field says"),
    "header claiming 2**60 bytes": (["--model", "{tmp}/huge-header.safetensors"], 1, "1152921504606846976 bytes"),
    "config missing a key": (["--model-config", "{tmp}/no-z.yaml"], 1, "no-z.yaml lacks the parameter 'z_channels'"),
    "unsupported config value": (["--model", "{sd21}", "--model-config", "{tmp}/pooled.yaml"], 1,
                                 "pooled.yaml: OpenCLIP text encoder layer must be one of"),
    "model is a folder": (["--model", "{tmp}"], 2, "is a folder, not a weights file"),
    "model is not a regular file": (["--model", "/dev/zero"], 2, "/dev/zero is not a regular file"),
    "ftp init image": (["--init-image", "ftp://example.com/a.png"], 2, "only http:// and https:// URLs"),
    "file url init image": (["--init-image", "file:///tmp/a.png"], 2, "give the path /tmp/a.png instead"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_no_file(case, tiny_models, tmp_path, corrupt_checkpoint, bad_model_files,
                                                 http_server):
    extra, exit_code, mentioned = BAD_INPUTS[case]
    (tmp_path / "a-file").write_text("not a folder")
    outdir = tmp_path / "out"
    values = {"tmp": tmp_path, "corrupt": corrupt_checkpoint, "url": http_server[0], "sd21": tiny_models["tiny-sd21-v"],
              "repo": Path(__file__).resolve().parents[2]}
    extra = [arg.format(**values) for arg in extra]
    args = ["a dog", "--model", str(tiny_models["tiny-sd15"]), "--steps", "2", "--outdir", str(outdir), *extra]
    result = CliRunner().invoke(imagine_cmd, args)
    assert result.exit_code == exit_code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    error_lines = [line for line in result.output.splitlines() if line.startswith(("Error", "Usage", "Try"))]
    assert any(mentioned in line for line in error_lines), result.output
    assert "Traceback" not in result.output
    assert written_files(outdir) == []


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_unavailable_device_is_a_usage_error(device, tiny_models, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available() and device.startswith("cuda") or torch.backends.mps.is_available() and device == "mps":
        device = f"cuda:{torch.cuda.device_count()}"  # a machine that has the device: ask for one past its last GPU
    monkeypatch.setenv("IMAGINAIRY_DEVICE", device)
    result = CliRunner().invoke(imagine_cmd, ["a dog", "--model", str(tiny_models["tiny-sd15"]), "--steps", "1",
                                              "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"Error: IMAGINAIRY_DEVICE={device!r}, but" in result.output and "Traceback" not in result.output
    assert written_files(tmp_path / "out") == []


def test_real_process_exit_codes_and_no_traceback(tmp_path):
    result = subprocess.run([str(IMAGINE_BIN), "a dog", "--init-image", str(tmp_path / "nope.jpg")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in result.stderr


def test_help_is_instant_and_imports_no_torch():
    code = "import sys, imaginairy.cli.imagine; assert 'torch' not in sys.modules and 'PIL' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    start = time.perf_counter()
    result = subprocess.run([str(IMAGINE_BIN), "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "--sampler-type" in result.stdout
    assert elapsed < 2.0  # about 0.1 s on an idle machine; generous for loaded CI


@pytest.mark.parametrize("args", [["-h"], ["a dog", "-h"], ["-h", "--steps", "3"]])
def test_h_without_a_number_shows_the_help(args):
    result = CliRunner().invoke(imagine_cmd, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and "--sampler-type" in result.output


def test_h_with_a_number_is_still_the_height(monkeypatch):
    seen = capture_prompts(monkeypatch)
    assert CliRunner().invoke(imagine_cmd, ["a dog", "-h", "128", "--model", "sd-1.5"]).exit_code == 0
    assert seen[0].height == 128


def capture_prompts(monkeypatch) -> list:
    """Replace the generation by a recorder of the prompts the command built."""
    from imaginairy import api

    seen = []

    def record(prompts, outdir, **kwargs):
        seen.extend(prompts)
        return []

    monkeypatch.setattr(api, "imagine_image_files", record)
    return seen


def test_every_option_reaches_the_prompt(monkeypatch, tmp_path):
    """Each option named like an ImaginePrompt field sets that field (a non-default value for each)."""
    init = tmp_path / "init.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(init)
    given = {"negative_prompt": "blurry", "prompt_strength": 3.5, "init_image_strength": 0.6, "mask_prompt": "a cat",
             "mask_mode": "keep", "seamless_boost": 0.3, "seed": 5, "steps": 7, "width": 128, "height": 192,
             "sampler_type": "ddim", "ddim_eta": 0.5, "model": "sd-2.1", "precision": "bf16", "memory_mode": "low",
             "fix_faces_fidelity": 0.9, "safety_mode": "filter"}
    args = ["a dog", "--init-image", str(init), "--no-mask-modify-original", "--tile-x", "--fix-faces", "--upscale",
            "--caption"]
    for name, value in given.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    seen = capture_prompts(monkeypatch)
    result = CliRunner().invoke(imagine_cmd, args)
    assert result.exit_code == 0, result.output
    (prompt,) = seen
    assert {name: getattr(prompt, name) for name in given} == {**given, "negative_prompt": prompt.negative_prompt}
    assert prompt.negative_prompt[0].text == "blurry" and prompt.init_image.filepath == str(init)
    assert (prompt.mask_modify_original, prompt.tile_mode, prompt.fix_faces, prompt.upscale, prompt.caption) == (
        False, "x", True, True, True)
    defaults = CliRunner().invoke(imagine_cmd, ["a dog", "--model", "sd-1.5"])
    assert defaults.exit_code == 0
    expected = ImaginePrompt("a dog", model="sd-1.5", seed=seen[1].seed)  # unset options: the fields' defaults
    assert {name: getattr(seen[1], name) for name in ImaginePrompt.defaults()} == vars(expected)


@pytest.mark.parametrize(("args", "expected"), [
    (["--sampler-type", "DPM++ 2M Karras"], ("k_dpmpp_2m", "karras")),
    (["--sampler-type", "Euler a"], ("k_euler_a", "uniform")),
    (["--sampler-type", "k_euler", "--schedule", "exponential"], ("k_euler", "exponential")),
])  # fmt: skip
def test_a1111_sampler_names_and_schedules_reach_the_prompt(monkeypatch, args, expected):
    seen = capture_prompts(monkeypatch)
    result = CliRunner().invoke(imagine_cmd, ["a dog", *args])
    assert result.exit_code == 0, result.output
    assert (seen[0].sampler_type, seen[0].schedule) == expected


def test_a_turbo_model_brings_its_own_steps_guidance_and_sampler(monkeypatch):
    seen = capture_prompts(monkeypatch)
    assert CliRunner().invoke(imagine_cmd, ["a fox", "--model", "sdxl-turbo"]).exit_code == 0
    assert CliRunner().invoke(imagine_cmd, ["a fox", "--model", "sdxl-turbo", "--steps", "4"]).exit_code == 0
    assert [(p.steps, p.prompt_strength, p.sampler_type) for p in seen] == [
        (1, 0.0, "k_euler_a"),
        (4, 0.0, "k_euler_a"),
    ]


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler-type", "bogus"], "sampler_type 'bogus' is not supported"),
    (["--sampler-type", "ddim", "--schedule", "karras"], "applies to the k-samplers only"),
    (["--schedule", "sideways"], "Invalid value for '--schedule'"),
])  # fmt: skip
def test_bad_sampler_or_schedule_is_a_usage_error(args, message):
    result = CliRunner().invoke(imagine_cmd, ["a dog", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_quiet_still_says_where_the_images_went_and_sums_up(tiny_models, tmp_path):
    outdir = tmp_path / "out"
    result = CliRunner().invoke(imagine_cmd, ["a dog", "a cat", "--model", str(tiny_models["tiny-sd15"]), "--steps",
                                              "1", "--outdir", str(outdir), "-q", "--safety-mode", "off"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    written = written_files(outdir)
    assert [Path(line) for line in lines[:2]] == written
    assert re.fullmatch(rf"2 images in {re.escape(str(outdir / 'generated'))}/, \d+\.\d s", lines[2]), lines
    assert "Generating" not in result.output


def test_usage_errors_come_back_before_torch_is_imported(tmp_path):
    """An unknown model, a model file that is not there and an init image that is not an image are reported by a
    process that never imported torch (so in well under a second on an idle machine)."""
    (tmp_path / "text.jpg").write_text("not an image")
    cases = [
        (["--model", "sd-9"], "unknown model 'sd-9'"),
        (["--model", str(tmp_path / "m.safetensors")], "m.safetensors"),
        (["--init-image", str(tmp_path / "text.jpg")], "Not an image file"),
    ]
    for args, message in cases:
        code = ("import sys; from imaginairy.cli.imagine import imagine_cmd\n"
                f"try:\n    imagine_cmd({['a dog', *args]!r})\n"
                "finally:\n    print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and result.stderr.strip().endswith("no torch"), result.stderr


def test_a_normal_run_prints_no_dependency_warnings_and_notes_sit_on_their_own_lines(tiny_models, tmp_path):
    """k_dpmpp_sde (torchsde), face fixing and upscaling (spandrel, facexlib, torchvision) on the tiny models, in a
    real process: no warning text; the offline safety note is one short line of its own."""
    from tiny_enhancers import make_tiny_codeformer, make_tiny_realesrgan

    env = {**__import__("os").environ, "IMAGINAIRY_CODEFORMER_MODEL": str(make_tiny_codeformer(tmp_path / "cf.pth")),
           "IMAGINAIRY_REALESRGAN_MODEL": str(make_tiny_realesrgan(tmp_path / "esrgan.pth"))}
    result = subprocess.run([str(IMAGINE_BIN), "a dog", "--model", str(tiny_models["tiny-sd15"]), "--steps", "3",
                             "--sampler-type", "k_dpmpp_sde", "--upscale", "--outdir",
                             str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "warn(" not in result.stderr, result.stderr
    notes = [line for line in result.stderr.splitlines() if "No safety check was run" in line]
    assert len(notes) == 1 and notes[0].startswith("No safety check was run") and len(notes[0]) < 200, notes
