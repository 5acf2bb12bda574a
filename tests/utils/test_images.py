"""imaginairy.utils.images: loading input images (LazyLoadingImage, every pixel format into 8-bit RGB), PIL <->
torch, and fitting images to a size."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imaginairy.errors import ImageDownloadError, ImageLoadError, InvalidInputError
from imaginairy.utils.images import LazyLoadingImage, pil_to_tensor, resize_and_crop, tensor_to_pil, tensor_to_pils


@pytest.fixture
def png_path(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(path)
    return path


def test_loads_file_as_rgb(png_path):
    image = LazyLoadingImage(filepath=png_path)
    assert image.size == (20, 10)
    assert (image.width, image.height) == (20, 10)
    assert image.as_pil().mode == "RGB"
    assert image.as_pil().getpixel((0, 0)) == (255, 0, 0)
    assert image.alpha is None
    assert image.source == str(png_path)


def test_does_not_read_the_file_until_used(tmp_path):
    path = tmp_path / "later.png"
    path.write_bytes(b"not yet an image")
    image = LazyLoadingImage(filepath=path)
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    assert image.size == (8, 8)


def test_grayscale_file_becomes_rgb(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.new("L", (9, 7), 128).save(path)
    assert LazyLoadingImage(filepath=path).as_pil().mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be rotated 90 degrees clockwise to display.
    Image.new("RGB", (40, 20), (0, 0, 255)).save(path, exif=exif)
    image = LazyLoadingImage(filepath=path)
    assert image.size == (20, 40)


def test_rgba_keeps_alpha(tmp_path):
    path = tmp_path / "transparent.png"
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    img.putpixel((0, 0), (10, 20, 30, 0))
    img.save(path)
    image = LazyLoadingImage(filepath=path)
    assert image.as_pil().mode == "RGB"
    assert image.alpha.mode == "L"
    assert image.alpha.getpixel((0, 0)) == 0
    assert image.alpha.getpixel((1, 1)) == 255
    assert image.as_rgba().getpixel((0, 0)) == (10, 20, 30, 0)


def test_opaque_image_as_rgba_is_opaque(png_path):
    assert LazyLoadingImage(filepath=png_path).as_rgba().getpixel((3, 3)) == (255, 0, 0, 255)


def test_from_pil_image():
    image = LazyLoadingImage(img=Image.new("RGBA", (5, 6), (1, 2, 3, 40)))
    assert image.size == (5, 6)
    assert image.as_pil().mode == "RGB"
    assert image.alpha.getpixel((0, 0)) == 40
    assert image.source == "<PIL image>"


def test_img_must_be_pil_image():
    with pytest.raises(ImageLoadError, match="img must be a PIL image, got bytes"):
        LazyLoadingImage(img=b"abc")


@pytest.mark.parametrize(
    "sources, given",
    [({}, "none"), ({"filepath": "a.png", "url": "http://x/a.png"}, "filepath, url")],
)
def test_exactly_one_source(sources, given):
    with pytest.raises(InvalidInputError, match=f"exactly one of filepath, url or img; got {given}"):
        LazyLoadingImage(**sources)


def test_missing_file_fails_at_construction(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageLoadError, match=f"^Image file not found: {path}$"):
        LazyLoadingImage(filepath=path)


def test_directory_fails_at_construction(tmp_path):
    with pytest.raises(ImageLoadError, match=f"is a directory, not an image file: {tmp_path}$"):
        LazyLoadingImage(filepath=tmp_path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    image = LazyLoadingImage(filepath=path)
    with pytest.raises(ImageLoadError, match=f"^Not an image file .*: {path}$"):
        image.as_pil()


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 0)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=f"^Cannot read image {path}: (?i:.*truncated)"):
        LazyLoadingImage(filepath=path).as_pil()


def test_file_removed_after_construction(png_path):
    image = LazyLoadingImage(filepath=png_path)
    png_path.unlink()
    with pytest.raises(ImageLoadError, match=f"^Image file not found: {png_path}$"):
        image.size


def test_from_url(route_server, png_body):
    base_url, routes = route_server
    routes["/a.png"] = (200, "image/png", png_body)
    image = LazyLoadingImage(url=f"{base_url}/a.png")
    assert image.size == (16, 12)
    assert image.as_pil().getpixel((0, 0)) == (10, 200, 30)


def test_url_is_fetched_lazily(route_server, png_body):
    base_url, routes = route_server
    image = LazyLoadingImage(url=f"{base_url}/later.png")
    routes["/later.png"] = (200, "image/png", png_body)
    assert image.size == (16, 12)


def test_url_404(route_server):
    base_url, _ = route_server
    with pytest.raises(ImageDownloadError, match=f"Cannot download {base_url}/gone.png: HTTP 404"):
        LazyLoadingImage(url=f"{base_url}/gone.png").as_pil()


def test_url_connection_refused(refused_url):
    with pytest.raises(ImageDownloadError, match=f"Cannot download {refused_url}"):
        LazyLoadingImage(url=refused_url).as_pil()


def test_url_body_not_an_image(route_server):
    base_url, routes = route_server
    routes["/page"] = (200, "text/html", b"<html>hello</html>")
    with pytest.raises(ImageLoadError, match=f"Not an image file .*: {base_url}/page$"):
        LazyLoadingImage(url=f"{base_url}/page").as_pil()


def test_url_must_be_http():
    with pytest.raises(InvalidInputError, match="must start with http:// or https://"):
        LazyLoadingImage(url="ftp://example.com/a.png")


def test_repr_does_not_load(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("garbage")
    assert repr(LazyLoadingImage(filepath=path)) == f"LazyLoadingImage({str(path)!r})"


@pytest.mark.parametrize("bits", [16, 32])
def test_16_and_32_bit_grey_images_keep_their_levels(tmp_path, bits):
    from imaginairy.utils.images import LazyLoadingImage

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    img = Image.fromarray(ramp.astype(np.uint16)) if bits == 16 else Image.fromarray(ramp.astype(np.int32), mode="I")
    path = tmp_path / ("ramp.png" if bits == 16 else "ramp.tif")  # PNG has no 32-bit grey
    img.save(path)
    loaded = np.asarray(LazyLoadingImage(filepath=path).as_pil().convert("L"), dtype=float)
    expected = ramp / 257
    assert np.abs(loaded - expected).max() <= 1
    assert 120 < loaded.mean() < 135


def test_float_images_are_scaled_to_8_bits():
    from imaginairy.utils.images import eight_bit

    img = Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), mode="F")
    levels = np.asarray(eight_bit(img))
    assert levels.min() == 0 and levels.max() == 255


def test_pil_to_tensor_shape_and_range():
    img = Image.new("RGB", (6, 4), (0, 255, 128))
    tensor = pil_to_tensor(img)
    assert tensor.shape == (1, 3, 4, 6)
    assert tensor.dtype == torch.float32
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)


def test_pil_to_tensor_converts_other_modes():
    assert pil_to_tensor(Image.new("L", (3, 2), 0)).shape == (1, 3, 2, 3)
    assert pil_to_tensor(Image.new("RGBA", (3, 2))).shape == (1, 3, 2, 3)


def test_round_trip_is_exact():
    img = Image.effect_noise((16, 8), 64).convert("RGB")
    assert tensor_to_pil(pil_to_tensor(img)).tobytes() == img.tobytes()


def test_tensor_to_pil_clamps_and_accepts_3d():
    tensor = torch.tensor([-3.0, 0.0, 3.0]).view(3, 1, 1).expand(3, 2, 2)
    img = tensor_to_pil(tensor.to(torch.float16))
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (0, 128, 255)


def test_tensor_to_pils_batch():
    images = tensor_to_pils(torch.zeros(2, 3, 5, 7))
    assert [img.size for img in images] == [(7, 5), (7, 5)]


def test_tensor_to_pil_rejects_batches_and_bad_shapes():
    with pytest.raises(ValueError, match="batch of 2"):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"shape \[N, 3, H, W\]"):
        tensor_to_pils(torch.zeros(1, 4, 4, 4))


def test_resize_and_crop_keeps_the_middle():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 200, 100))
    result = resize_and_crop(img, 64, 64)
    assert result.size == (64, 64)
    assert result.getpixel((32, 32)) == (0, 0, 255)
    assert result.getpixel((2, 32))[2] > 200


@pytest.mark.parametrize("source_size, target", [((10, 10), (64, 32)), ((512, 768), (512, 512)), ((33, 17), (8, 8))])
def test_resize_and_crop_sizes(source_size, target):
    assert resize_and_crop(Image.new("RGB", source_size), *target).size == target


def test_fifo_fails_at_construction_instead_of_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer for ever
    with pytest.raises(ImageLoadError, match=f"not a regular file .*: {fifo}$"):
        LazyLoadingImage(filepath=fifo)


@pytest.mark.parametrize(("location", "message"), [
    ("ftp://example.com/a.png", "only http:// and https:// URLs are supported"),
    ("file:///tmp/a.png", "file:// URLs are not read; give the path /tmp/a.png instead"),
])
def test_other_url_schemes_are_named_as_urls(location, message):
    from imaginairy.schema import ImaginePrompt

    with pytest.raises(InvalidInputError, match=message):
        ImaginePrompt("a dog", init_image=location)
