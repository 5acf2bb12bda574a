#!/usr/bin/env python
"""Write tiny Stable Diffusion models with seeded random weights, in the real checkpoint layouts.

    python scripts/make_tiny_models.py OUTDIR             # the diffusion models
    python scripts/make_tiny_models.py --helpers OUTDIR   # and every helper model, with an env file pointing at them

Each model is the real architecture at toy size (few channels, two UNet levels, a 2-3 layer text encoder with the
real CLIP vocabulary), saved as a real checkpoint file with a CompVis-style yaml of the same stem beside it, so the
loader finds the config the way it finds one next to any downloaded model:

    tiny-sd15.safetensors, tiny-sd15.ckpt (same weights), tiny-sd15.yaml        SD 1.x: CLIP text encoder, epsilon
    tiny-sd15-inpainting.safetensors, tiny-sd15-inpainting.yaml                 SD 1.x inpainting: 9 UNet inputs
    tiny-sd21-v.safetensors, tiny-sd21-v.yaml                                   SD 2.x: OpenCLIP, v prediction

With --helpers it also writes the helper models in their real architectures and layouts (tiny_enhancers.py,
tiny_clipseg.py, tiny_retinaface.py): tiny-clipseg/, tiny-blip-image-captioning-base/,
tiny-stable-diffusion-safety-checker/ (transformers folders), tiny-RealESRGAN_x4plus.pth, tiny-codeformer.pth,
tiny-retinaface.pth, and `helpers.env`, the IMAGINAIRY_*_MODEL settings that point at them (`set -a; . helpers.env`).

Every parameter is drawn from a seeded normal distribution (none left at the zero initialisation of output
layers), so two implementations that agree on these weights agree on real ones. The files also carry what real
checkpoints carry besides the networks: the noise-schedule buffers, EMA bookkeeping and, in the SD 1 files, the
text encoder's legacy `position_ids`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imaginairy.models.loading import load_model_config  # noqa: E402
from imaginairy.models.registry import CONFIGS_DIR  # noqa: E402
from imaginairy.models.weights import save_state_dict  # noqa: E402
from imaginairy.modules.diffusion import build_latent_diffusion  # noqa: E402

TINY_UNET = {
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [1, 2],
    "context_dim": 32,
}
TINY_VAE = {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1}
TINY_CLIP = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
TINY_OPENCLIP = {"width": 32, "layers": 3, "heads": 4, "output_dim": 32}
TINY_DEFAULT_LATENT_SIZE = 8  # 64px images

MODELS = {
    "tiny-sd15": ("sd-v1.yaml", {"num_heads": 2}, TINY_CLIP, 1),
    "tiny-sd15-inpainting": ("sd-v1-inpainting.yaml", {"num_heads": 2}, TINY_CLIP, 2),
    "tiny-sd21-v": ("sd-v2-v.yaml", {"num_head_channels": 16}, TINY_OPENCLIP, 3),
}


def tiny_config(family_config: str, unet_heads: dict, text_params: dict) -> dict:
    config = load_model_config(CONFIGS_DIR / family_config)
    params = config["model"]["params"]
    params["image_size"] = TINY_DEFAULT_LATENT_SIZE
    params["unet_config"]["params"].update(TINY_UNET, **unet_heads)
    params["first_stage_config"]["params"]["ddconfig"].update(TINY_VAE)
    params["cond_stage_config"]["params"].update(text_params)
    return config


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter from a seeded normal: matrices scaled by 1/sqrt(fan-in), vectors around their init value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def schedule_buffers(config: dict) -> dict[str, torch.Tensor]:
    """The DDPM schedule buffers CompVis checkpoints carry (ignored by the loader, present in real files)."""
    params = config["model"]["params"]
    betas = torch.linspace(params["linear_start"] ** 0.5, params["linear_end"] ** 0.5, params["timesteps"],
                           dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return {
        "betas": betas.float(),
        "alphas_cumprod": alphas_cumprod.float(),
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float(),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
    }


def make_tiny_model(outdir: Path, name: str) -> Path:
    family_config, unet_heads, text_params, seed = MODELS[name]
    config = tiny_config(family_config, unet_heads, text_params)
    model = build_latent_diffusion(config)
    randomize_(model, seed)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    state_dict.update(schedule_buffers(config))
    if config["model"]["params"]["cond_stage_config"]["target"].endswith(".FrozenCLIPEmbedder"):
        position_ids = torch.arange(text_params.get("max_position_embeddings", 77))[None]
        state_dict["cond_stage_model.transformer.text_model.embeddings.position_ids"] = position_ids
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(config), outdir / f"{name}.yaml")
    weights_path = outdir / f"{name}.safetensors"
    save_state_dict(state_dict, weights_path)
    if name == "tiny-sd15":
        save_state_dict(state_dict, outdir / f"{name}.ckpt")
    return weights_path


HELPER_ENV_VARS = {  # helper model -> (the setting that points at it, its file or folder name)
    "clipseg": ("IMAGINAIRY_CLIPSEG_MODEL", "tiny-clipseg"),
    "blip": ("IMAGINAIRY_BLIP_MODEL", "tiny-blip-image-captioning-base"),
    "safety": ("IMAGINAIRY_SAFETY_CHECKER_MODEL", "tiny-stable-diffusion-safety-checker"),
    "realesrgan": ("IMAGINAIRY_REALESRGAN_MODEL", "tiny-RealESRGAN_x4plus.pth"),
    "codeformer": ("IMAGINAIRY_CODEFORMER_MODEL", "tiny-codeformer.pth"),
    "retinaface": ("IMAGINAIRY_RETINAFACE_MODEL", "tiny-retinaface.pth"),
}


def make_tiny_helpers(outdir: str | Path) -> dict[str, Path]:
    """Every helper model at toy size in `outdir`, plus `helpers.env` naming them; returns name -> path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_clipseg import make_tiny_clipseg
    from tiny_enhancers import make_tiny_blip, make_tiny_codeformer, make_tiny_realesrgan, make_tiny_safety_checker
    from tiny_retinaface import make_tiny_retinaface

    outdir = Path(outdir).resolve()
    builders = {"clipseg": make_tiny_clipseg, "blip": make_tiny_blip, "safety": make_tiny_safety_checker,
                "realesrgan": make_tiny_realesrgan, "codeformer": make_tiny_codeformer,
                "retinaface": make_tiny_retinaface}
    paths = {name: Path(build(outdir / HELPER_ENV_VARS[name][1])) for name, build in builders.items()}
    env_lines = [f"{HELPER_ENV_VARS[name][0]}={path}" for name, path in paths.items()]
    (outdir / "helpers.env").write_text("\n".join(env_lines) + "\n")
    return paths


def make_tiny_models(outdir: str | Path) -> dict[str, Path]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return {name: make_tiny_model(outdir, name) for name in MODELS}


if __name__ == "__main__":
    arguments = sys.argv[1:]
    with_helpers = "--helpers" in arguments
    arguments = [argument for argument in arguments if argument != "--helpers"]
    if len(arguments) != 1:
        sys.exit(__doc__)
    for path in make_tiny_models(arguments[0]).values():
        print(path)
    if with_helpers:
        for path in make_tiny_helpers(arguments[0]).values():
            print(path)
