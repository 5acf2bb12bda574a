"""The `aimg` command group: the interactive shell, describe, upscale, system-info, and its start-up cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_enhancers import make_tiny_blip, make_tiny_realesrgan

from imaginairy.cli.aimg import aimg

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture
def tiny_blip_env(blip_dir, monkeypatch):
    monkeypatch.setenv("IMAGINAIRY_BLIP_MODEL", str(blip_dir))


def write_photo(path: Path, seed: int = 0, size=(40, 32)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run_aimg(args: list[str], input: str | None = None):
    return CliRunner().invoke(aimg, args, input=input)


def test_help_lists_the_commands_without_importing_heavy_libraries():
    script = (
        "import sys\n"
        "from imaginairy.cli.aimg import aimg\n"
        "aimg(['--help'], standalone_mode=False)\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'PIL', 'click_repl') if m in sys.modules))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    for command in ("describe", "upscale", "system-info", "imagine"):
        assert command in completed.stdout
    assert "heavy: []" in completed.stdout


def test_shell_runs_typed_commands_and_reports_errors_without_leaving(tiny_blip_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_photo(tmp_path / "good.png")
    typed = [
        "help",
        "system-info",
        "not-a-command",
        "describe missing.jpg",
        "describe --no-such-option",
        "help describe",
        "describe good.png",
        "exit",
        "system-info",
    ]
    result = run_aimg([], input="\n".join(typed) + "\n")

    assert result.exit_code == 1, result.output  # fed by a pipe: the failed commands make the exit code 1
    assert "Commands:" in result.stdout and "exit" in result.stdout and "system-info" in result.stdout
    assert result.stdout.count("torch: ") == 1, "system-info ran once: nothing runs after exit"
    assert "No such command 'not-a-command'" in result.stderr
    assert "Error: Image file not found: missing.jpg" in result.stderr
    assert "No such option '--no-such-option'" in result.stderr
    assert "Print a caption for each image" in result.stdout
    caption_lines = [line for line in result.stdout.splitlines() if line.startswith("good.png: ")]
    assert len(caption_lines) == 1 and len(caption_lines[0]) > len("good.png: ")
    assert "Traceback" not in result.output


def test_shell_fed_only_good_commands_exits_zero(tiny_blip_env):
    result = run_aimg([], input="help\nsystem-info\nexit\n")
    assert result.exit_code == 0, result.output
    assert "torch: " in result.stdout


def test_describe_reports_each_bad_input_and_describes_the_rest(tiny_blip_env, tmp_path, http_server):
    base_url, web_root = http_server
    good = write_photo(tmp_path / "good.png")
    write_photo(web_root / "remote.png", seed=1)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    write_photo(tmp_path / "whole.jpg", size=(64, 64))
    truncated.write_bytes((tmp_path / "whole.jpg").read_bytes()[:400])
    folder = tmp_path / "a-folder"
    folder.mkdir()
    inputs = [
        str(tmp_path / "missing.jpg"),
        str(good),
        str(not_an_image),
        str(truncated),
        str(folder),
        f"{base_url}/absent.png",
        "http://127.0.0.1:9/refused.png",
        f"{base_url}/remote.png",
    ]
    result = run_aimg(["describe", *inputs])

    assert result.exit_code == 1
    described = [line.split(": ", 1)[0] for line in result.stdout.splitlines()]
    assert described == [str(good), f"{base_url}/remote.png"]
    lines = [line for line in result.stderr.splitlines() if line.strip() and "it/s]" not in line]  # no progress bars
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 6 and errors == lines
    for bad_input, error in zip(inputs[:1] + inputs[2:7], errors):
        assert bad_input in error
    assert "HTTP 404" in errors[4]
    assert "Traceback" not in result.output


def test_describe_without_the_caption_model_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGINAIRY_BLIP_MODEL", raising=False)
    result = run_aimg(["describe", str(write_photo(tmp_path / "good.png"))])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Salesforce/blip-image-captioning-base" in result.stderr
    assert "IMAGINAIRY_BLIP_MODEL" in result.stderr


def test_upscale_writes_new_4x_files_and_never_overwrites(tmp_path):
    weights = make_tiny_realesrgan(tmp_path / "tiny-RealESRGAN_x4plus.pth")
    photo = write_photo(tmp_path / "photo.png", size=(24, 16))
    outdir = tmp_path / "upscaled"
    arguments = ["upscale", str(photo), str(tmp_path / "missing.png"), "--outdir", str(outdir), "--model", str(weights)]

    first = run_aimg(arguments)
    second = run_aimg(arguments)

    assert first.exit_code == second.exit_code == 1
    assert "missing.png" in first.stderr
    written = sorted(outdir.iterdir())
    assert [path.name for path in written] == ["000001_photo_upscaled.jpg", "000002_photo_upscaled.jpg"]
    assert all(Image.open(path).size == (96, 64) for path in written)
    assert f"{photo}: {written[0]}" in first.stdout


def test_upscale_with_missing_weights_is_a_usage_error(tmp_path):
    photo = write_photo(tmp_path / "photo.png")
    result = run_aimg(["upscale", str(photo), "--model", str(tmp_path / "no-such-weights.pth")])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_system_info_names_versions_device_and_memory():
    result = run_aimg(["system-info"])
    assert result.exit_code == 0
    rows = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert {"imaginairy", "python", "torch", "device", "memory"} <= set(rows)
    assert rows["device"] in {"cpu", "cuda", "mps"} or rows["device"].startswith(("cuda", "mps"))
    assert "GiB" in rows["memory"]


def test_imagine_is_a_subcommand():
    result = run_aimg(["imagine", "--help"])
    assert result.exit_code == 0
    assert "PROMPT" in result.output
