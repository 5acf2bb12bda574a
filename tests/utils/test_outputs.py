import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from imaginairy.errors import InvalidInputError, OutputWriteError
from imaginairy.schema import ImaginePrompt, ImagineResult, WeightedPrompt
from imaginairy.utils.metadata import read_metadata
from imaginairy.utils.outputs import (
    file_format_for,
    image_filename,
    next_free_counter,
    prepare_outdir,
    prompt_slug,
    sampler_short_name,
    save_result,
    write_new_file,
    write_numbered_file,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_text(text: str):
    def write(file, file_format):
        file.write(f"{file_format}:{text}".encode())

    return write


def failing_write(file, file_format):
    file.write(b"partial")
    raise RuntimeError("encoder exploded")


def numbered(name: str):
    return lambda counter: f"{counter:06d}_{name}"


def test_image_filename():
    prompt = ImaginePrompt("a scenic landscape", seed=557988237, sampler_type="plms", steps=40)
    assert image_filename(1, prompt) == "000001_557988237_PLMS40_PS7.5_a_scenic_landscape.jpg"
    upscaled_name = "000012_557988237_PLMS40_PS7.5_a_scenic_landscape_upscaled.png"
    assert image_filename(12, prompt, "upscaled", "PNG") == upscaled_name


def test_image_filename_uses_positive_prompts_only():
    prompt = ImaginePrompt([WeightedPrompt("cat", 2), WeightedPrompt("dog", -1)], seed=3, prompt_strength=10)
    assert image_filename(2, prompt) == "000002_3_KDPMPP2M40_PS10_cat.jpg"


@pytest.mark.parametrize(
    "text, slug",
    [
        ("a scenic landscape", "a_scenic_landscape"),
        ("  Café / crème brûlée!? ", "Cafe_creme_brulee"),
        ("../../etc/passwd", "etc_passwd"),
        ("日本語", "no_prompt"),
        ("", "no_prompt"),
        ("word " * 30, ("word_" * 12)[:60].rstrip("_")),
    ],
)
def test_prompt_slug(text, slug):
    assert prompt_slug(text) == slug
    assert len(prompt_slug(text)) <= 60


def test_sampler_short_name():
    assert sampler_short_name("k_dpmpp_2s_a") == "KDPMPP2SA"
    assert sampler_short_name("ddim") == "DDIM"


@pytest.mark.parametrize("name, file_format", [("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("dir.x/a.png", "PNG")])
def test_file_format_for(name, file_format):
    assert file_format_for(name) == file_format


def test_file_format_for_unknown_extension():
    message = r"Cannot save a\.webp: unsupported extension 'webp'; use one of: jpg, jpeg, png"
    with pytest.raises(InvalidInputError, match=message):
        file_format_for("a.webp")


def test_next_free_counter(tmp_path):
    assert next_free_counter(tmp_path) == 1
    for name in ["000003_x.jpg", "000010_y.png", "notes.txt", "12abc.jpg", ".000099_hidden"]:
        (tmp_path / name).write_text("")
    assert next_free_counter(tmp_path) == 11


def test_write_numbered_file_creates_folder_and_counts(tmp_path):
    outdir = tmp_path / "new" / "folder"
    first = write_numbered_file(outdir, numbered("a.png"), write_text("one"))
    second = write_numbered_file(outdir, numbered("a.png"), write_text("two"))
    assert (first.name, second.name) == ("000001_a.png", "000002_a.png")
    assert first.read_bytes() == b"PNG:one"
    assert second.read_bytes() == b"PNG:two"
    assert sorted(os.listdir(outdir)) == ["000001_a.png", "000002_a.png"]


def test_write_numbered_file_continues_after_existing_numbers(tmp_path):
    (tmp_path / "000041_other.jpg").write_bytes(b"keep")
    path = write_numbered_file(tmp_path, numbered("a.jpg"), write_text("new"))
    assert path.name == "000042_a.jpg"
    assert (tmp_path / "000041_other.jpg").read_bytes() == b"keep"


def test_write_numbered_file_skips_taken_names_with_any_counter(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"keep")
    path = write_numbered_file(
        tmp_path, lambda counter: "a.jpg" if counter < 3 else f"a{counter}.jpg", write_text("new")
    )
    assert path.name == "a3.jpg"
    assert (tmp_path / "a.jpg").read_bytes() == b"keep"


def test_write_new_file_never_overwrites(tmp_path):
    path = tmp_path / "result.png"
    path.write_bytes(b"original")
    with pytest.raises(OutputWriteError, match=f"Not overwriting existing file {path}; choose another name"):
        write_new_file(path, write_text("new"))
    assert path.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["result.png"]


def test_write_new_file(tmp_path):
    path = write_new_file(tmp_path / "sub" / "x.jpg", write_text("data"))
    assert path.read_bytes() == b"JPEG:data"


def test_failure_while_writing_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_numbered_file(tmp_path, numbered("a.jpg"), failing_write)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_new_file(tmp_path / "b.png", failing_write)
    assert os.listdir(tmp_path) == []


def test_output_folder_under_a_file(tmp_path):
    regular_file = tmp_path / "a_file"
    regular_file.write_text("")
    outdir = regular_file / "sub"
    message = f"^Cannot create output folder {outdir}: .*; choose a writable folder.$"
    with pytest.raises(OutputWriteError, match=message):
        write_numbered_file(outdir, numbered("a.jpg"), write_text("x"))
    with pytest.raises(OutputWriteError, match=f"^Cannot create output folder {outdir}"):
        write_new_file(outdir / "x.png", write_text("x"))
    assert os.listdir(tmp_path) == ["a_file"]


def test_prepare_outdir(tmp_path):
    assert prepare_outdir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert prepare_outdir(str(tmp_path)) == tmp_path
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputWriteError, match="Cannot create output folder .*file/sub: .*; choose a writable folder."):
        prepare_outdir(tmp_path / "file" / "sub")


def test_save_result(tmp_path):
    prompt = ImaginePrompt("a scenic landscape", seed=557988237, sampler_type="plms", steps=40)
    images = {"generated": Image.new("RGB", (64, 48), "blue"), "upscaled": Image.new("RGB", (128, 96), "blue")}
    result = ImagineResult(images, prompt)
    first = save_result(result, tmp_path)
    second = save_result(result, tmp_path, extension="png", image_type="upscaled")
    assert first.name == "000001_557988237_PLMS40_PS7.5_a_scenic_landscape.jpg"
    assert second.name == "000002_557988237_PLMS40_PS7.5_a_scenic_landscape_upscaled.png"
    assert read_metadata(first) == read_metadata(second) == result.metadata
    with Image.open(second) as img:
        assert (img.format, img.size) == ("PNG", (128, 96))


def test_output_folder_is_a_file(tmp_path):
    regular_file = tmp_path / "a_file"
    regular_file.write_text("")
    with pytest.raises(OutputWriteError, match="Cannot create output folder"):
        write_numbered_file(regular_file, numbered("a.jpg"), write_text("x"))


def test_falls_back_when_hard_links_are_unsupported(tmp_path, monkeypatch):
    def no_links(source, destination):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "000001_a.jpg").write_bytes(b"keep")
    path = write_numbered_file(
        tmp_path, lambda counter: "000001_a.jpg" if counter < 3 else "000003_a.jpg", write_text("x")
    )
    assert path.name == "000003_a.jpg"
    assert path.read_bytes() == b"JPEG:x"
    assert (tmp_path / "000001_a.jpg").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["000001_a.jpg", "000003_a.jpg"]


def test_concurrent_threads_get_distinct_numbers(tmp_path):
    def save_five(thread_number):
        for i in range(5):
            write_numbered_file(tmp_path, numbered("same_name.jpg"), write_text(f"{thread_number}-{i}"))

    threads = [threading.Thread(target=save_five, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(os.listdir(tmp_path))
    assert names == [f"{counter:06d}_same_name.jpg" for counter in range(1, 41)]
    contents = {(tmp_path / name).read_bytes() for name in names}
    assert contents == {f"JPEG:{n}-{i}".encode() for n in range(8) for i in range(5)}


WRITER_SCRIPT = """
import sys
from imaginairy.utils.outputs import write_numbered_file
outdir, label = sys.argv[1], sys.argv[2]
for i in range(20):
    write_numbered_file(
        outdir,
        lambda counter: f"{counter:06d}_{label}.png",
        lambda f, fmt: f.write(f"{label}-{i}".encode()),
    )
"""


def test_concurrent_processes_get_distinct_numbers(tmp_path):
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), label], cwd=REPO_ROOT)
        for label in ("first", "second", "third")
    ]
    assert [process.wait(timeout=60) for process in processes] == [0, 0, 0]
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 60
    assert sorted(int(name[:6]) for name in names) == list(range(1, 61))
    contents = {(tmp_path / name).read_bytes() for name in names}
    assert contents == {f"{label}-{i}".encode() for label in ("first", "second", "third") for i in range(20)}
