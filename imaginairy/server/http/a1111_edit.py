"""A1111's img2img and extras settings carried out around our pipeline: resizing, mask blur and inversion, the
"fill" start for masked areas, "inpaint only masked" (a crop generated at full size and pasted back), and the
extras upscale / face-fix task."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fastapi import HTTPException

from imaginairy.errors import InvalidInputError
from imaginairy.server.images import decode_image
from imaginairy.server.limits import MAX_INPUT_IMAGE_PIXELS, MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE

if TYPE_CHECKING:
    from PIL import Image

FILL, ORIGINAL = 0, 1
RESIZE_STRETCH, RESIZE_CROP = 0, 1
UPSCALERS = {  # A1111 name -> (our model name or a PIL resampling filter name, scale)
    "None": (None, 1),
    "Lanczos": ("LANCZOS", 4),
    "Nearest": ("NEAREST", 4),
    "R-ESRGAN 4x+": ("realesrgan", 4),
}


@dataclasses.dataclass
class Edit:
    """How to put a generated image back: into `original` at `box` (inpaint only masked), through `mask`."""

    original: Image.Image | None = None
    box: tuple[int, int, int, int] | None = None
    mask: Image.Image | None = None

    def finish(self, result):
        if self.box is None:
            return result
        from PIL import Image

        left, top, right, bottom = self.box
        crop_size = (right - left, bottom - top)
        generated = result.img.convert("RGB").resize(crop_size, Image.Resampling.LANCZOS)
        pasted = self.original.copy()
        pasted.paste(generated, (left, top), self.mask.crop(self.box))
        result.images[result.final_kind] = pasted
        return result


def decoded(data: str, field: str) -> Image.Image:
    try:
        return decode_image(data, field)
    except InvalidInputError as e:
        raise HTTPException(422, str(e)) from e


def prepare(body, settings: dict) -> Edit:
    """`body` an a1111.Img2ImgRequest: fill `settings` with the init image, strength and mask the request asks for;
    the Edit that finishes it."""
    from PIL import Image, ImageFilter

    from imaginairy.utils.images import resize_and_crop

    if not body.init_images or len(body.init_images) != 1:
        raise HTTPException(422, "init_images: send exactly one image (base64 PNG or JPEG).")
    init = decoded(body.init_images[0], "init_images[0]")
    mask = decoded(body.mask, "mask").convert("L") if body.mask else None
    init = init.convert("RGB")
    width = settings.setdefault("width", size_of(init.width))
    height = settings.setdefault("height", size_of(init.height))
    if body.resize_mode == RESIZE_STRETCH:
        init = init.resize((width, height), Image.Resampling.LANCZOS)
    elif body.resize_mode == RESIZE_CROP:
        init = resize_and_crop(init, width, height)
    else:
        raise HTTPException(422, f"resize_mode={body.resize_mode} is not supported; use 0 (just resize) or 1 "
                                 "(crop and resize).")
    strength = 0.75 if body.denoising_strength is None else body.denoising_strength
    if not 0 <= strength <= 1:
        raise HTTPException(422, f"denoising_strength must be from 0 to 1, got {strength}.")
    settings["init_image_strength"] = 1 - strength
    if mask is None:
        settings["init_image"] = init
        return Edit()
    if body.resize_mode == RESIZE_STRETCH:
        mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    else:
        mask = resize_and_crop(mask, width, height)
    if body.inpainting_mask_invert not in (0, 1):
        raise HTTPException(422, f"inpainting_mask_invert must be 0 or 1, got {body.inpainting_mask_invert}.")
    if body.inpainting_mask_invert:
        mask = Image.eval(mask, lambda value: 255 - value)
    blur = body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y)
    if blur < 0:
        raise HTTPException(422, f"mask_blur must be 0 or more, got {blur}.")
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    if body.inpainting_fill == FILL:
        init = filled(init, mask)
    elif body.inpainting_fill != ORIGINAL:
        raise HTTPException(422, f"inpainting_fill={body.inpainting_fill} is not supported; use 0 (fill) or 1 "
                                 "(original).")
    edit = Edit()
    if body.inpaint_full_res:
        box = masked_box(mask, body.inpaint_full_res_padding, width, height)
        if box is None:
            raise HTTPException(422, "mask: the mask is all black, nothing to inpaint; white marks what to repaint.")
        edit = Edit(original=init, box=box, mask=mask)
        init = init.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        mask = mask.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    settings.update(init_image=init, mask_image=mask, mask_mode="replace")  # A1111 masks: white is repainted
    return edit


def size_of(side: int) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, side // SIZE_MULTIPLE * SIZE_MULTIPLE))


def filled(img: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the blurred colours around it (normalised blur of the kept
    pixels), so generation starts from the surroundings rather than from what was there."""
    import numpy as np
    from PIL import Image

    keep = (np.asarray(mask, dtype=np.float32) < 128).astype(np.float32)
    if not keep.any():
        return img
    pixels = np.asarray(img, dtype=np.float32)
    radius = max(img.size) / 8
    blurred = np.zeros_like(pixels)
    weight = blur_float(keep, radius)
    for channel in range(3):
        blurred[..., channel] = blur_float(pixels[..., channel] * keep, radius)
    mean = (pixels * keep[..., None]).sum((0, 1)) / keep.sum()
    fill = np.where(weight[..., None] > 1e-3, blurred / np.maximum(weight[..., None], 1e-3), mean)
    out = np.where(keep[..., None] > 0, pixels, fill)
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8), "RGB")


def blur_float(values, radius: float):
    import torch
    import torch.nn.functional as F

    sigma = max(radius / 2, 1.0)
    size = int(sigma * 3) * 2 + 1
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = torch.from_numpy(values)[None, None]
    x = F.conv2d(F.pad(x, (size // 2, size // 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, size // 2, size // 2), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[0, 0].numpy()


def masked_box(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box around the mask's white area plus `padding`, widened to the width:height aspect, inside the image."""
    box = mask.point(lambda value: 255 if value > 0 else 0).getbbox()
    if box is None:
        return None
    left, top, right, bottom = box[0] - padding, box[1] - padding, box[2] + padding, box[3] + padding
    box_width, box_height = right - left, bottom - top
    if box_width / box_height < width / height:
        grow = round(box_height * width / height) - box_width
        left, right = left - grow // 2, right + grow - grow // 2
    else:
        grow = round(box_width * height / width) - box_height
        top, bottom = top - grow // 2, bottom + grow - grow // 2
    box_width, box_height = min(right - left, width), min(bottom - top, height)
    left = min(max(left, 0), width - box_width)
    top = min(max(top, 0), height - box_height)
    return left, top, left + box_width, top + box_height


def extras_task(body, img: Image.Image):
    """`body` an a1111.ExtrasSingleImageRequest: the upscale / face-fix work /extra-single-image asks for, checked
    now and run later on the device worker."""
    if body.gfpgan_visibility:
        raise HTTPException(422, "gfpgan_visibility: GFPGAN is not available here; use codeformer_visibility.")
    if body.upscaler_2 not in (None, "None") and body.extras_upscaler_2_visibility:
        raise HTTPException(422, "upscaler_2: a second upscaler is not supported; leave it 'None'.")
    upscaler = body.upscaler_1 or "None"
    if upscaler not in UPSCALERS:
        raise HTTPException(422, f"upscaler_1: unknown upscaler {upscaler!r}; GET /sdapi/v1/upscalers lists them.")
    if not 0 <= body.codeformer_visibility <= 1 or not 0 <= body.codeformer_weight <= 1:
        raise HTTPException(422, "codeformer_visibility and codeformer_weight must be from 0 to 1.")
    if body.resize_mode == 0:
        size = (round(img.width * body.upscaling_resize), round(img.height * body.upscaling_resize))
    elif body.resize_mode == 1:
        size = (body.upscaling_resize_w, body.upscaling_resize_h)
    else:
        raise HTTPException(422, f"resize_mode={body.resize_mode} is not supported; use 0 (scale by) or 1 (to size).")
    if upscaler == "None":
        size = img.size
    if size[0] < 1 or size[1] < 1 or size[0] * size[1] > MAX_INPUT_IMAGE_PIXELS:
        raise HTTPException(422, f"The result would be {size[0]}x{size[1]}px; this server makes at most "
                                 f"{MAX_INPUT_IMAGE_PIXELS} pixels.")
    img = img.convert("RGB")

    def fix_faces(image):
        if not body.codeformer_visibility:
            return image
        from PIL import Image

        from imaginairy.enhancers.face_fix import fix_faces as codeformer

        return Image.blend(image, codeformer(image, fidelity=body.codeformer_weight), body.codeformer_visibility)

    def upscale(image):
        from PIL import Image

        from imaginairy.utils.images import resize_and_crop

        method = UPSCALERS[upscaler][0]
        if method is None:
            return image
        if method == "realesrgan":
            from imaginairy.enhancers.upscale import upscale_image

            image = upscale_image(image)
            method = "LANCZOS"
        resample = getattr(Image.Resampling, method)
        if body.resize_mode == 1 and body.upscaling_crop:
            return resize_and_crop(image, *size) if method == "LANCZOS" else image.resize(size, resample)
        return image.resize(size, resample)

    def run():
        return fix_faces(upscale(img)) if body.upscale_first else upscale(fix_faces(img))

    return run
