"""A cheap preview of latents while sampling: a linear map of the 4 latent channels to RGB, no VAE.

The factors are the least-squares fit of SD 1.x/2.x VAE-decoded colours to the (scaled) latent channels published by
Keturn, "Decoding latents to RGB without upscaling", https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-
upscaling/23204 (the same numbers A1111's "Approx cheap" live preview uses). One latent pixel becomes one preview
pixel, so a 512x512 image previews at 64x64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

# rows: latent channels 0..3; columns: the R, G, B contribution of each
SD_LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latent_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """(4, h, w) or (1, 4, h, w) scaled SD latents -> (h, w, 3) RGB in about -1..1."""
    import torch

    if latents.dim() == 4:
        latents = latents[0]
    if latents.shape[0] != len(SD_LATENT_RGB_FACTORS):
        raise ValueError(f"a latent preview needs {len(SD_LATENT_RGB_FACTORS)} latent channels, "
                         f"got {latents.shape[0]}")
    factors = torch.tensor(SD_LATENT_RGB_FACTORS, dtype=torch.float32)
    return torch.einsum("chw,cr->hwr", latents.detach().float().cpu(), factors)


def latent_preview(latents: torch.Tensor) -> Image.Image:
    """The RGB preview image of one latent (the first of a batch)."""
    import torch
    from PIL import Image

    rgb = ((latent_to_rgb(latents).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(rgb.numpy(), "RGB")
