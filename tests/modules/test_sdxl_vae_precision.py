"""SDXL's VAE decodes in float32 where float16 would overflow; other models and bf16 keep their dtype."""

import torch

from imaginairy.models.loading import load_diffusion_model
from imaginairy.models.registry import ModelSpec


def tiny(tiny_models, name, dtype):
    path = tiny_models[name]
    return load_diffusion_model(ModelSpec(name, str(path), path.with_suffix(".yaml")), dtype=dtype)


def test_float16_sdxl_decodes_in_float32_close_to_the_float32_model(tiny_models):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    full = tiny(tiny_models, "tiny-sdxl", torch.float32)
    half = tiny(tiny_models, "tiny-sdxl", torch.float16)
    with torch.inference_mode():
        expected = full.decode_latent(latent)
        pixels = half.decode_latent(latent.half())
        encoded = half.encode_image(pixels.half())  # the upcast VAE still takes the pipeline's float16 pixels
    assert pixels.dtype == torch.float32 and encoded.dtype == torch.float32
    assert next(half.first_stage_model.parameters()).dtype == torch.float32
    assert next(half.unet.parameters()).dtype == torch.float16
    # only the float16 rounding of the stored weights differs
    assert (pixels - expected).abs().max() < 2e-2


def test_bfloat16_sdxl_and_float16_sd_keep_their_vae_dtype(tiny_models):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for name, dtype in [("tiny-sdxl", torch.bfloat16), ("tiny-sd15", torch.float16)]:
        model = tiny(tiny_models, name, dtype)
        with torch.inference_mode():
            assert model.decode_latent(latent.to(dtype)).dtype == dtype
