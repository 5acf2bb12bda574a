import json

import pytest
from PIL import ExifTags, Image

from imaginairy.errors import ImageLoadError
from imaginairy.schema import ImaginePrompt, WeightedPrompt
from imaginairy.utils.metadata import (
    a1111_parameters,
    build_metadata,
    imaginairy_version,
    read_metadata,
    read_parameters,
    write_image_with_metadata,
)


def metadata_for(**prompt_settings):
    prompt = ImaginePrompt(**{"prompt": "a scenic landscape", "seed": 1, **prompt_settings})
    return {**build_metadata(prompt, 512, 512), "imaginairy_version": "0.1.0"}


def test_build_metadata_has_the_settings():
    prompt = ImaginePrompt("a cat", seed=5, width=None)
    metadata = build_metadata(prompt, 512, 768)
    assert metadata == {**prompt.to_metadata(), "width": 512, "height": 768, "imaginairy_version": imaginairy_version()}
    json.dumps(metadata)


def test_a1111_parameters_exact():
    metadata = metadata_for(negative_prompt="blurry")
    assert a1111_parameters(metadata) == (
        "a scenic landscape\n"
        "Negative prompt: blurry\n"
        "Steps: 40, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd-1.5, "
        "Version: imaginairy 0.1.0"
    )


def test_a1111_parameters_without_negative_prompt_has_no_negative_line():
    metadata = metadata_for(sampler_type="plms", steps=15, prompt_strength=7)
    assert a1111_parameters(metadata) == (
        "a scenic landscape\n"
        "Steps: 15, Sampler: PLMS, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd-1.5, Version: imaginairy 0.1.0"
    )


def test_a1111_parameters_name_a_non_default_schedule_as_the_web_ui_does():
    metadata = metadata_for(sampler_type="DPM++ 2M SDE Karras", steps=20)
    assert a1111_parameters(metadata) == (
        "a scenic landscape\n"
        "Steps: 20, Sampler: DPM++ 2M SDE, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd-1.5, "
        "Schedule type: Karras, Version: imaginairy 0.1.0"
    )


def test_a1111_parameters_optional_settings_and_quoting(tmp_path):
    init_path = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(init_path)
    metadata = metadata_for(
        prompt=[WeightedPrompt("a cat", 1.5), WeightedPrompt("a dog", 0.5), WeightedPrompt("fur", -1)],
        negative_prompt="ugly, blurry",
        sampler_type="k_euler_a",
        init_image=str(init_path),
        init_image_strength=0.3,
        ddim_eta=0.5,
        tile_mode="xy",
        model="models/my: model.safetensors",
    )
    assert a1111_parameters(metadata) == (
        "a cat :1.5 AND a dog :0.5\n"
        "Negative prompt: ugly, blurry AND fur\n"
        'Steps: 40, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: "models/my: model.safetensors", '
        "Denoising strength: 0.7, Eta: 0.5, Tiling: True, Version: imaginairy 0.1.0"
    )


def test_a1111_parameters_single_axis_tiling():
    assert ", Tile mode: x, " in a1111_parameters(metadata_for(tile_mode="x"))


@pytest.mark.parametrize("extension, file_format", [("png", "PNG"), ("jpg", "JPEG")])
def test_round_trip(tmp_path, extension, file_format):
    metadata = metadata_for(prompt="ünïcode prompt ✨, with commas", negative_prompt="無")
    path = tmp_path / f"out.{extension}"
    with open(path, "wb") as f:
        write_image_with_metadata(Image.new("RGB", (32, 32), "white"), f, file_format, metadata)
    assert read_metadata(path) == metadata
    assert read_parameters(path) == a1111_parameters(metadata)
    with Image.open(path) as img:
        assert img.format == file_format
        assert img.size == (32, 32)


def test_png_text_chunks(tmp_path):
    metadata = metadata_for()
    path = tmp_path / "out.png"
    with open(path, "wb") as f:
        write_image_with_metadata(Image.new("RGB", (8, 8)), f, "PNG", metadata)
    with Image.open(path) as img:
        assert img.text["parameters"] == a1111_parameters(metadata)
        assert json.loads(img.text["imaginairy"]) == metadata


def test_jpeg_user_comment_is_exif_unicode(tmp_path):
    metadata = metadata_for(prompt="café")
    path = tmp_path / "out.jpg"
    with open(path, "wb") as f:
        write_image_with_metadata(Image.new("RGB", (8, 8)), f, "JPEG", metadata)
    with Image.open(path) as img:
        exif = img.getexif()
        user_comment = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
        assert exif.endian == ">"
        assert user_comment == b"UNICODE\0" + a1111_parameters(metadata).encode("utf-16-be")
        assert json.loads(exif[ExifTags.Base.ImageDescription]) == metadata


def test_rgba_saved_as_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "out.jpg"
    with open(path, "wb") as f:
        write_image_with_metadata(Image.new("RGBA", (8, 8)), f, "JPEG", metadata_for())
    assert read_metadata(path)["seed"] == 1


@pytest.mark.parametrize("extension", ["png", "jpg"])
def test_file_without_metadata(tmp_path, extension):
    path = tmp_path / f"plain.{extension}"
    Image.new("RGB", (8, 8)).save(path)
    assert read_metadata(path) == {}
    assert read_parameters(path) is None


def test_read_metadata_of_non_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ImageLoadError, match=f"Cannot read metadata of {path}"):
        read_metadata(path)


def test_unknown_format_rejected(tmp_path):
    with open(tmp_path / "x.gif", "wb") as f, pytest.raises(ValueError, match="Unsupported image format 'GIF'"):
        write_image_with_metadata(Image.new("RGB", (8, 8)), f, "GIF", metadata_for())


def test_settings_too_long_for_jpeg_exif_are_left_out_with_a_warning(tmp_path, caplog):
    from imaginairy.schema import ImagineResult

    prompt = ImaginePrompt("城" * 27000, seed=1)
    result = ImagineResult({"generated": Image.new("RGB", (64, 64), "red")}, prompt)
    jpeg = result.save(tmp_path / "long.jpg")
    assert Image.open(jpeg).size == (64, 64)
    assert "too long for a JPEG" in caplog.text
    png = result.save(tmp_path / "long.png")
    assert read_metadata(png)["prompt"][0]["text"] == "城" * 27000
