"""Outpainting: a bigger canvas around an init image, and fillings of the new area that generation can continue.

    all100            100 px on every side
    up50,right200     50 px above, 200 px to the right
    all100,down0      100 px on every side but the bottom

An outpaint spec is a comma-separated list of `<side><pixels>` items, sides `up`, `down`, `left`, `right` and
`all`; a named side overrides `all` whatever the order. Spaces around items are ignored, a side may appear once.

Two fillings of the new area (the caller decides which one the sampler starts from):
- `expand_canvas`: the image's edge pixels stretched outwards and blurred, a calm continuation of its colours;
- `frequency_matched_noise` (the seamless mode): random noise whose spatial spectrum is the image's own, with the
  colours of the kept pixels, so structure and texture at the right scale are already there.

The spec parser imports nothing heavy, so `ImaginePrompt` validates specs cheaply; numpy and PIL are imported by
the functions that draw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imaginairy.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL import Image

SIDES = ("up", "down", "left", "right")
SPEC_ITEM_PATTERN = re.compile(r"^(all|up|down|left|right)(\d+)$")
MAX_OUTPAINT_PIXELS = 4096
EDGE_BLUR_FRACTION = 0.25  # blur radius of the stretched edges, as a fraction of the widest extension


@dataclass(frozen=True)
class OutpaintAmounts:
    """How many pixels to add on each side."""

    up: int = 0
    down: int = 0
    left: int = 0
    right: int = 0

    def canvas_size(self, width: int, height: int) -> tuple[int, int]:
        return width + self.left + self.right, height + self.up + self.down

    def __bool__(self) -> bool:
        return any((self.up, self.down, self.left, self.right))


def parse_outpaint_spec(spec: str) -> OutpaintAmounts:
    """The amounts an outpaint spec like "all100,up50" names; InvalidInputError naming the bad item otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError(f"outpaint must be a spec like 'all100,up50,left200', got {spec!r}.")
    given: dict[str, int] = {}
    for item in spec.split(","):
        match = SPEC_ITEM_PATTERN.match(item.strip().lower())
        if match is None:
            raise InvalidInputError(
                f"outpaint item {item.strip()!r} in {spec!r} is not <side><pixels>; use sides up, down, left, right"
                " or all, e.g. 'all100,up50,left200'."
            )
        side, pixels = match.group(1), int(match.group(2))
        if side in given:
            raise InvalidInputError(f"outpaint side {side!r} is given twice in {spec!r}; name each side once.")
        if pixels > MAX_OUTPAINT_PIXELS:
            raise InvalidInputError(f"outpaint {side}{pixels} is too far: extend each side by at most "
                                    f"{MAX_OUTPAINT_PIXELS} px.")
        given[side] = pixels
    everywhere = given.get("all", 0)
    amounts = OutpaintAmounts(**{side: given.get(side, everywhere) for side in SIDES})
    if not amounts:
        raise InvalidInputError(f"outpaint {spec!r} adds no pixels: give at least one side more than 0, e.g. 'all100'.")
    return amounts


def expand_canvas(image: Image.Image, amounts: OutpaintAmounts) -> tuple[Image.Image, Image.Image]:
    """(canvas, new area): `image` on a canvas grown by `amounts`, the new area filled with its edges stretched and
    blurred; the new area as an "L" image, 255 where the canvas is new. The original pixels are unchanged."""
    import numpy as np
    from PIL import Image, ImageFilter

    pixels = np.asarray(image.convert("RGB"))
    padding = ((amounts.up, amounts.down), (amounts.left, amounts.right), (0, 0))
    stretched = Image.fromarray(np.pad(pixels, padding, mode="edge"))
    widest = max(amounts.up, amounts.down, amounts.left, amounts.right)
    canvas = stretched.filter(ImageFilter.GaussianBlur(max(1.0, EDGE_BLUR_FRACTION * widest)))
    canvas.paste(image.convert("RGB"), (amounts.left, amounts.up))
    new_area = Image.new("L", canvas.size, 255)
    new_area.paste(0, (amounts.left, amounts.up, amounts.left + image.width, amounts.up + image.height))
    return canvas, new_area


def frequency_matched_noise(image: Image.Image, fill_area: Image.Image, seed: int) -> Image.Image:
    """`image` with `fill_area` (an "L" image, 255 = fill) replaced by noise shaped like the rest of the image.

    The noise is white noise filtered with the magnitude spectrum of the kept pixels (the fill area set to their
    mean colour first), so it has the image's own mix of coarse and fine structure; each channel is then mapped
    onto the kept pixels' value distribution (rank matching), so it has the image's colours. Pixels outside the fill
    area are returned unchanged. Deterministic for a seed.
    """
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    fill = np.asarray(fill_area.convert("L")) >= 128
    kept = ~fill
    if not fill.any() or not kept.any():
        return image.convert("RGB")
    mean_colour = pixels[kept].mean(axis=0)
    flattened = np.where(fill[..., None], mean_colour, pixels) - mean_colour
    magnitude = np.abs(np.fft.fft2(flattened, axes=(0, 1)))
    white = np.random.default_rng(seed).standard_normal(pixels.shape)
    shaped = np.real(np.fft.ifft2(np.fft.fft2(white, axes=(0, 1)) * magnitude, axes=(0, 1)))
    filled = pixels.copy()
    for channel in range(3):
        filled[..., channel][fill] = rank_matched(shaped[..., channel][fill], pixels[..., channel][kept])
    return Image.fromarray(np.round(filled * 255).clip(0, 255).astype(np.uint8))


def rank_matched(values, reference):
    """`values` (1-D) mapped onto the distribution of `reference`: the k-th smallest value becomes the reference
    value at the same quantile."""
    import numpy as np

    ranks = np.argsort(np.argsort(values))
    quantiles = ranks / max(1, values.size - 1)
    sorted_reference = np.sort(reference, axis=None)
    return np.interp(quantiles, np.linspace(0, 1, sorted_reference.size), sorted_reference)
