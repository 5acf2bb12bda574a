"""Inpainting and outpainting: from a prompt's mask settings to what the sampler needs, and back to images.

`prepare_edit(prompt, default_size)` is the one entry point: it returns an `Edit` for every prompt (a plain
txt2img or img2img prompt gets one that changes nothing), holding the generation size, the sampler's starting
picture, its mask, the inputs a 9-channel inpainting UNet takes, and `composite` / `finish` for the way back.

The *described mask* (white = the area the mask describes) comes from, in this order:
- `mask_prompt`: the mask language through CLIPSeg (`imaginairy.masking.clipseg`), on the full-resolution init
  image. The CLIPSeg weights are read from the folder or hub repo id in the environment variable
  `IMAGINAIRY_CLIPSEG_MODEL`, default `CIDAS/clipseg-rd64-refined` (downloaded once into the hub cache);
- `mask_image`: a black/white image (white = the area; values >= 128 count as white), resized to the init
  image's size with a logged note when the sizes differ;
- the transparency of the init image, when neither is given and some pixel is not fully opaque: the non-opaque
  pixels are the area.
`mask_mode` "replace" regenerates the area, "keep" regenerates everything else. An outpaint spec grows the canvas
(`imaginairy.masking.outpaint`) and adds the new area to the region to regenerate.

The generation sees one *frame* of the canvas: the canvas scaled to cover the generation size and centre-cropped
(with outpainting and no size given: the whole canvas, generated at its size rounded up to a multiple of 8, one
latent pixel, and scaled down to fit when it grew past the largest size).
Where the sampler regenerates (at latent resolution) is every 8x8 block the frame's regenerate mask touches.

After decoding, the image is composited onto the frame in pixel space through a *softened* mask, the regenerate
mask times its own gaussian blur (sigma 1% of the shorter side, at least 1 px): it fades in from the mask's edge
inwards and is exactly 0 outside the mask. `mask_modify_original` pastes the generated image, scaled back to the
frame's box, into the full-resolution canvas through the same kind of softened mask, so every pixel outside the
mask is the original's.

`seamless_boost` (0..1, the Stability API's schedule.start above 1): the region to regenerate starts from
`frequency_matched_noise` instead of the picture, and the protected region near the mask changes too: the
sampler's mask and both composites become max(mask, boost x halo), the halo being the regenerate mask blurred with
sigma 1/16 of the shorter side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imaginairy.errors import EmptyMaskError
from imaginairy.masking.outpaint import OutpaintAmounts, expand_canvas, frequency_matched_noise, parse_outpaint_spec
from imaginairy.modules.autoencoder import LATENT_SCALE
from imaginairy.schema import MAX_SIDE, ImaginePrompt
from imaginairy.settings import CLIPSEG_MODEL_ENV, Settings  # noqa: F401 (CLIPSEG_MODEL_ENV: named in the docstring)
from imaginairy.utils.images import has_transparent_pixels, pil_to_tensor, resize_and_crop

logger = logging.getLogger(__name__)

OUTPAINT_SIZE_MULTIPLE = LATENT_SCALE  # one latent pixel
MASK_IMAGE_THRESHOLD = 128
SOFT_EDGE_FRACTION = 0.01
MIN_SOFT_EDGE_PIXELS = 1.0
SEAMLESS_HALO_FRACTION = 1 / 16


@dataclass(frozen=True, eq=False)
class MaskedCanvas:
    """An inpainting or outpainting job, prepared: the full-resolution canvas and masks, and the frame generated.

    Masks are "L" images, 255 where the image is regenerated.
    """

    canvas: Image.Image  # RGB at full resolution: the init image, grown when outpainting
    regenerate: Image.Image  # on the canvas, binary
    grayscale: Image.Image  # on the canvas, the soft mask the binary one was cut from
    box: tuple[int, int, int, int]  # the part of the canvas the frame shows
    frame_image: Image.Image  # the canvas at generation size (what the composite keeps)
    init_image: Image.Image  # the sampler's starting picture at generation size (noise-filled when seamless)
    frame_regenerate: Image.Image  # the regenerate mask at generation size, binary
    seamless_boost: float
    modify_original: bool


@dataclass(frozen=True, eq=False)
class Edit:
    """What a prompt's init image and mask settings mean for one generation, prepared once by `prepare_edit`.

    - `width`, `height`: the generation size;
    - `init_image`: the sampler's starting picture at that size, or None to start from noise;
    - `unchanged_image`: what a run at init image strength 1 returns (nothing is generated);
    - `sampler_mask()`: where a 4-channel model regenerates, at latent resolution, or None for everywhere;
    - `inpainting_inputs()`: what a 9-channel inpainting UNet is conditioned on, before encoding;
    - `composite(decoded)`: the decoded image let into the frame (before the post-processing);
    - `finish(final)`: the extra result images (the final image pasted into the original, the masks).
    `masked` holds the masks of an inpainting or outpainting job; None for txt2img and img2img.
    """

    width: int
    height: int
    init_image: Image.Image | None
    masked: MaskedCanvas | None = None

    @property
    def unchanged_image(self) -> Image.Image | None:
        return self.masked.frame_image if self.masked is not None else self.init_image

    def sampler_mask(self) -> torch.Tensor | None:
        return latent_mask(self.masked) if self.masked is not None else None

    def inpainting_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask [1, 1, h/8, w/8], masked image [1, 3, H, W] in [-1, 1]); without masks everything is regenerated
        from a blank image."""
        if self.masked is None:
            regenerate = torch.ones(1, 1, self.height, self.width)
            pixels = torch.zeros(1, 3, self.height, self.width)
        else:
            regenerate, pixels = mask_tensor(self.masked.frame_regenerate), pil_to_tensor(self.masked.init_image)
        return inpainting_mask_and_image(regenerate, pixels)

    def composite(self, decoded: Image.Image) -> Image.Image:
        return composited_onto_frame(self.masked, decoded) if self.masked is not None else decoded

    def finish(self, final: Image.Image) -> dict[str, Image.Image]:
        return edit_result_images(self.masked, final) if self.masked is not None else {}


@dataclass(frozen=True)
class DescribedMask:
    """The area a mask setting describes, on the init image: soft values in [0, 1], the binary cut, its origin."""

    grayscale: np.ndarray  # float32 [H, W]
    binary: np.ndarray  # bool [H, W]
    origin: str


def is_edit(prompt: ImaginePrompt) -> bool:
    """Whether the prompt asks for inpainting or outpainting (a mask, an outpaint spec or a transparent init)."""
    if prompt.init_image is None:
        return False
    if prompt.mask_prompt or prompt.mask_image is not None or prompt.outpaint:
        return True
    return has_transparent_pixels(prompt.init_image.alpha)


def prepare_edit(
    prompt: ImaginePrompt, default_size: int, device: torch.device | str = "cpu", clipseg_model: str | None = None
) -> Edit:
    """The Edit of a prompt; EmptyMaskError when a mask or outpaint spec would regenerate nothing. Without masks the
    size is the prompt's or `default_size`, and the init image (at a strength above 0) is scaled to cover it and
    centre-cropped. `clipseg_model` is where the CLIPSeg weights for a mask prompt are (the settings'; read from
    the environment when not given)."""
    if not is_edit(prompt):
        width, height = prompt.width or default_size, prompt.height or default_size
        init_image = None
        if prompt.init_image is not None and prompt.init_image_strength > 0:
            init_image = resize_and_crop(prompt.init_image.as_pil(), width, height)
        return Edit(width, height, init_image)
    masked = masked_canvas(prompt, default_size, device, clipseg_model or Settings.from_environment().clipseg_model)
    return Edit(masked.frame_image.width, masked.frame_image.height, masked.init_image, masked)


def masked_canvas(
    prompt: ImaginePrompt, default_size: int, device: torch.device | str, clipseg_model: str
) -> MaskedCanvas:
    """The MaskedCanvas a prompt (with `is_edit(prompt)`) describes."""
    original = prompt.init_image.as_pil()
    described = described_mask(prompt, original, device, clipseg_model)
    grayscale, regenerate = regenerated_area(described, prompt.mask_mode, original.size)
    amounts = parse_outpaint_spec(prompt.outpaint) if prompt.outpaint else OutpaintAmounts()
    canvas, regenerate, grayscale = outpainted(original, regenerate, grayscale, amounts)
    origin = described.origin if described is not None else f"outpaint {prompt.outpaint!r}"
    if not regenerate.any():
        raise EmptyMaskError(
            f"Nothing to regenerate: the {origin} with mask_mode {prompt.mask_mode!r} covers no pixel to change;"
            " nothing was generated. Use mask_mode 'replace', a smaller mask or a non-zero outpaint."
        )
    width, height, box = generation_frame(prompt, canvas.size, default_size, outpainting=bool(amounts))
    regenerate_image = mask_image_from_array(regenerate)
    start_canvas = canvas
    if prompt.seamless_boost > 0:
        start_canvas = frequency_matched_noise(canvas, regenerate_image, prompt.seed)
    frame_regenerate = framed(regenerate_image, box, width, height, Image.Resampling.BOX).point(lambda v: 255 * (v > 0))
    if not np.asarray(frame_regenerate).any():
        raise EmptyMaskError(
            f"The {origin} lies outside the centre crop of the init"
            f" image that is generated at {width}x{height}; nothing was generated. Set width and height to the"
            " init image's aspect ratio."
        )
    return MaskedCanvas(
        canvas=canvas,
        regenerate=regenerate_image,
        grayscale=mask_image_from_array(grayscale),
        box=box,
        frame_image=framed(canvas, box, width, height, Image.Resampling.LANCZOS),
        init_image=framed(start_canvas, box, width, height, Image.Resampling.LANCZOS),
        frame_regenerate=frame_regenerate,
        seamless_boost=prompt.seamless_boost,
        modify_original=prompt.mask_modify_original,
    )


def described_mask(prompt: ImaginePrompt, original: Image.Image, device, clipseg_model: str) -> DescribedMask | None:
    """The mask the prompt describes on `original` (see the module docstring), or None for a pure outpaint."""
    if prompt.mask_prompt:
        from imaginairy.masking.clipseg import load_clipseg, mask_from_expression

        clipseg = load_clipseg(clipseg_model, device=device)
        grayscale, binary = mask_from_expression(original, prompt.mask_prompt, clipseg)
        described = DescribedMask(grayscale.cpu().numpy(), binary.cpu().numpy(), f"mask prompt {prompt.mask_prompt!r}")
        return checked_not_empty(described, "matched nothing in the init image; describe something it shows")
    if prompt.mask_image is not None:
        mask = prompt.mask_image.as_pil().convert("L")
        if mask.size != original.size:
            logger.warning(
                "The mask image is %dx%d, the init image %dx%d: resizing the mask to the init image's size.",
                *mask.size, *original.size,
            )
            mask = mask.resize(original.size, Image.Resampling.BILINEAR)
        values = np.asarray(mask)
        described = DescribedMask(values.astype(np.float32) / 255, values >= MASK_IMAGE_THRESHOLD,
                                  f"mask image {prompt.mask_image.source}")
        return checked_not_empty(described, "has no white pixels; white marks the mask area")
    alpha = prompt.init_image.alpha
    if has_transparent_pixels(alpha):
        values = np.asarray(alpha)
        return DescribedMask(1 - values.astype(np.float32) / 255, values < 255, "the init image's transparency")
    return None


def checked_not_empty(described: DescribedMask, problem: str) -> DescribedMask:
    if not described.binary.any():
        raise EmptyMaskError(f"The {described.origin} {problem}; nothing was generated.")
    return described


def regenerated_area(
    described: DescribedMask | None, mask_mode: str, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(soft, binary) masks of the init image's pixels to regenerate, after `mask_mode`."""
    if described is None:
        return np.zeros(size[::-1], np.float32), np.zeros(size[::-1], bool)
    if mask_mode == "keep":
        return 1 - described.grayscale, ~described.binary
    return described.grayscale, described.binary


def outpainted(original: Image.Image, regenerate: np.ndarray, grayscale: np.ndarray, amounts: OutpaintAmounts):
    """(canvas, regenerate, grayscale) grown by `amounts`; the new area is to be regenerated."""
    if not amounts:
        return original, regenerate, grayscale
    canvas, new_area = expand_canvas(original, amounts)
    new = np.asarray(new_area) > 0
    padding = ((amounts.up, amounts.down), (amounts.left, amounts.right))
    return (
        canvas,
        np.pad(regenerate, padding) | new,
        np.maximum(np.pad(grayscale, padding), new.astype(np.float32)),
    )


def generation_frame(
    prompt: ImaginePrompt, canvas_size: tuple[int, int], default_size: int, *, outpainting: bool
) -> tuple[int, int, tuple[int, int, int, int]]:
    """(width, height, box): the generation size and the part of the canvas it shows."""
    canvas_width, canvas_height = canvas_size
    scale = min(1.0, MAX_SIDE / max(canvas_width, canvas_height))  # a canvas grown past the largest size
    canvas_frame = tuple(
        min(MAX_SIDE, math.ceil(side * scale / OUTPAINT_SIZE_MULTIPLE) * OUTPAINT_SIZE_MULTIPLE)
        for side in (canvas_width, canvas_height)
    )
    # no size given, or the size this rule gives (as an outpainted image's metadata records it): the whole canvas
    if outpainting and (prompt.width, prompt.height) in ((None, None), canvas_frame):
        return *canvas_frame, (0, 0, canvas_width, canvas_height)
    width, height = prompt.width or default_size, prompt.height or default_size
    return width, height, cover_box(canvas_size, width, height)


def cover_box(size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The centred box of an image of `size` with the aspect ratio of width x height, as large as fits."""
    source_width, source_height = size
    scale = max(width / source_width, height / source_height)
    box_width, box_height = min(source_width, round(width / scale)), min(source_height, round(height / scale))
    left, top = (source_width - box_width) // 2, (source_height - box_height) // 2
    return left, top, left + box_width, top + box_height


def framed(image: Image.Image, box: tuple[int, int, int, int], width: int, height: int, resample) -> Image.Image:
    return image.resize((width, height), resample, box=box)


def mask_image_from_array(values: np.ndarray) -> Image.Image:
    """A bool or [0, 1] float array as an "L" image."""
    return Image.fromarray(np.round(values.astype(np.float32) * 255).clip(0, 255).astype(np.uint8))


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """An "L" mask as a float32 tensor [1, 1, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]


def latent_mask(edit: MaskedCanvas) -> torch.Tensor:
    """The sampler's mask [1, 1, h/8, w/8]: 1 on every latent cell whose 8x8 pixels touch the regenerate mask,
    raised to boost x halo around it in seamless mode."""
    regenerate = mask_tensor(edit.frame_regenerate)
    cells = F.max_pool2d(regenerate, LATENT_SCALE)
    if edit.seamless_boost == 0:
        return cells
    halo = F.avg_pool2d(seamless_halo(regenerate), LATENT_SCALE)
    return torch.maximum(cells, edit.seamless_boost * halo)


def inpainting_mask_and_image(
    frame_regenerate: torch.Tensor, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What an inpainting (9-channel) UNet is conditioned on, before encoding: the mask at latent resolution (a
    cell is 1 where its 8x8 pixels touch the mask) and the image with the regenerated pixels set to 0 (grey).
    `frame_regenerate` [1, 1, H, W] in {0, 1}, `pixels` [1, 3, H, W] in [-1, 1]."""
    cells = F.max_pool2d(frame_regenerate, LATENT_SCALE)
    return cells, pixels * (frame_regenerate < 0.5)


def soft_edge_sigma(width: int, height: int) -> float:
    return max(MIN_SOFT_EDGE_PIXELS, SOFT_EDGE_FRACTION * min(width, height))


def softened(regenerate: torch.Tensor) -> torch.Tensor:
    """The regenerate mask [1, 1, H, W] times its gaussian blur: fades in from the edge, exactly 0 outside."""
    from imaginairy.masking.clipseg import gaussian_blur

    sigma = soft_edge_sigma(regenerate.shape[-1], regenerate.shape[-2])
    return regenerate * gaussian_blur(regenerate, sigma).clamp(0, 1)


def seamless_halo(regenerate: torch.Tensor) -> torch.Tensor:
    from imaginairy.masking.clipseg import gaussian_blur

    sigma = SEAMLESS_HALO_FRACTION * min(regenerate.shape[-2:])
    return gaussian_blur(regenerate, max(1.0, sigma)).clamp(0, 1)


def composite_mask(regenerate: Image.Image, seamless_boost: float) -> Image.Image:
    """The "L" mask a generated image is composited through: the softened mask, with the seamless halo."""
    mask = mask_tensor(regenerate)
    weights = softened(mask)
    if seamless_boost > 0:
        weights = torch.maximum(weights, seamless_boost * seamless_halo(mask))
    return mask_image_from_array(weights[0, 0].numpy())


def composited_onto_frame(edit: MaskedCanvas, generated: Image.Image) -> Image.Image:
    """The generated image let into the frame through the softened (and seamless-haloed) regenerate mask."""
    return Image.composite(generated, edit.frame_image, composite_mask(edit.frame_regenerate, edit.seamless_boost))


def edit_result_images(edit: MaskedCanvas, final: Image.Image) -> dict[str, Image.Image]:
    """The extra result images of an edit: "modified_original" (`final` pasted into the canvas, with
    `modify_original`), "mask_binary" and "mask_grayscale" (on the canvas, white = regenerated)."""
    images = {"modified_original": pasted_into_canvas(edit, final)} if edit.modify_original else {}
    return {**images, "mask_binary": edit.regenerate, "mask_grayscale": edit.grayscale}


def pasted_into_canvas(edit: MaskedCanvas, generated: Image.Image) -> Image.Image:
    """The full-resolution canvas with `generated` (scaled back to its box) let in through the softened mask."""
    left, top, right, bottom = edit.box
    with_generated = edit.canvas.copy()
    with_generated.paste(generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
    inside_box = Image.new("L", edit.canvas.size, 0)
    inside_box.paste(edit.regenerate.crop(edit.box), (left, top))
    return Image.composite(with_generated, edit.canvas, composite_mask(inside_box, edit.seamless_boost))
