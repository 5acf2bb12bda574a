import pytest
import torch
from PIL import Image

from imaginairy.utils.images import pil_to_tensor, resize_and_crop, tensor_to_pil, tensor_to_pils


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
