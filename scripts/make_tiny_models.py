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

and textual-inversion embeddings for their 32-wide text encoders in embeddings/ (`make_tiny_embeddings`):

    tinycat.pt              A1111 .pt: string_to_param {"*": [2, 32]} (two vectors)
    tinystyle.safetensors   A1111 .safetensors: emb_params [3, 32]
    tinyneg.bin             diffusers learned_embeds layout: {"<tinyneg>": [32]} (one vector)

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


TINY_EMBEDDINGS = {"tinycat.pt": 2, "tinystyle.safetensors": 3, "tinyneg.bin": 1}  # file -> vectors


def make_tiny_embeddings(outdir: str | Path, width: int = TINY_CLIP["hidden_size"], seed: int = 7) -> dict[str, Path]:
    """Textual-inversion embeddings in the three layouts in circulation, with seeded vectors at the scale of the
    tiny text encoders' token table (trigger name -> path)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    paths = {}
    for file_name, count in TINY_EMBEDDINGS.items():
        vectors = torch.randn(count, width, generator=generator) / math.sqrt(width)
        path = outdir / file_name
        name = path.stem
        if path.suffix == ".pt":
            torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name,
                        "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
        elif path.suffix == ".safetensors":
            save_state_dict({"emb_params": vectors}, path)
        else:
            torch.save({f"<{name}>": vectors[0]}, path)
        paths[name] = path
    return paths


# Layers of the tiny SD 1.5 UNet / text encoder, written out by hand in the files' own naming (not derived from our
# module names, so a wrong name mapping in imaginairy.models.lora shows up as a mismatch with diffusers):
# (diffusers module path, input features, output features, kernel size; 0 = linear)
TINY_SD15_LORA_LAYERS = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 32, 32, 0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 32, 32, 0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v", 32, 32, 0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", 32, 32, 0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 32, 256, 0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2", 128, 32, 0),
    ("down_blocks.0.attentions.0.proj_in", 32, 32, 1),
    ("mid_block.attentions.0.transformer_blocks.0.attn1.to_v", 64, 64, 0),
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q", 32, 32, 0),
    ("up_blocks.1.attentions.1.proj_out", 32, 32, 1),
    ("down_blocks.0.resnets.0.conv1", 32, 32, 3),
    ("down_blocks.0.downsamplers.0.conv", 32, 32, 3),
    ("down_blocks.1.resnets.0.conv_shortcut", 32, 64, 1),
    ("mid_block.resnets.1.time_emb_proj", 128, 64, 0),
    ("up_blocks.0.resnets.1.conv2", 64, 64, 3),
    ("up_blocks.0.upsamplers.0.conv", 64, 64, 3),
]
TINY_SD15_TEXT_LORA_LAYERS = [
    ("text_model.encoder.layers.0.self_attn.q_proj", 32, 32, 0),
    ("text_model.encoder.layers.1.mlp.fc1", 32, 64, 0),
    ("text_model.encoder.layers.1.self_attn.out_proj", 32, 32, 0),
]
TINY_SD21_LORA_LAYERS = [
    ("down_blocks.0.attentions.0.proj_in", 32, 32, 0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 32, 32, 0),
]
TINY_SD21_TEXT_LORA_LAYERS = [("text_model.encoder.layers.1.self_attn.k_proj", 32, 32, 0)]
LORA_RANK = 4


def lora_pair(generator: torch.Generator, in_features: int, out_features: int, kernel: int, rank: int = LORA_RANK):
    """(down, up) of one layer, sized so the update is about as large as the weight: kohya's and PEFT's shapes."""
    down_shape = (rank, in_features, kernel, kernel) if kernel else (rank, in_features)
    up_shape = (out_features, rank, 1, 1) if kernel else (out_features, rank)
    down = torch.randn(down_shape, generator=generator) / math.sqrt(in_features * max(kernel, 1) ** 2)
    up = torch.randn(up_shape, generator=generator) / math.sqrt(rank)
    return down, up


def kohya_lora(layers, prefix: str, seed: int, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    """kohya / A1111 layout: lora_unet_<path with _>.lora_down.weight, .lora_up.weight, .alpha."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for path, in_features, out_features, kernel in layers:
        name = prefix + path.replace(".", "_")
        down, up = lora_pair(generator, in_features, out_features, kernel)
        state_dict.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                           f"{name}.alpha": torch.tensor(alpha)})
    return state_dict


def peft_lora(layers, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """diffusers / PEFT layout: unet.<path>.lora_A.weight, .lora_B.weight (alpha = rank)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for path, in_features, out_features, kernel in layers:
        down, up = lora_pair(generator, in_features, out_features, kernel)
        state_dict.update({f"{prefix}{path}.lora_A.weight": down, f"{prefix}{path}.lora_B.weight": up})
    return state_dict


def make_tiny_loras(outdir: str | Path) -> dict[str, Path]:
    """Tiny LoRAs for tiny-sd15 (kohya: UNet linear + 1x1/3x3 conv layers + text encoder; a second kohya one on
    other layers; PEFT: UNet linear + conv), for tiny-sd21-v (kohya, linear projections + OpenCLIP text encoder)
    and an SDXL-named one (kohya `lora_te1_` + `lora_te2_` keys)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = {
        "kohya-sd15": {**kohya_lora(TINY_SD15_LORA_LAYERS, "lora_unet_", 11),
                       **kohya_lora(TINY_SD15_TEXT_LORA_LAYERS, "lora_te_", 12)},
        "kohya-sd15-b": kohya_lora(TINY_SD15_LORA_LAYERS[::3], "lora_unet_", 13, alpha=4.0),
        "peft-sd15": peft_lora(TINY_SD15_LORA_LAYERS[2:14:2], "unet.", 14),
        "kohya-sd21": {**kohya_lora(TINY_SD21_LORA_LAYERS, "lora_unet_", 15),
                       **kohya_lora(TINY_SD21_TEXT_LORA_LAYERS, "lora_te_", 16)},
        "kohya-sdxl": {**kohya_lora([("text_model.encoder.layers.0.self_attn.q_proj", 32, 32, 0)], "lora_te1_", 17),
                       **kohya_lora([("text_model.encoder.layers.0.self_attn.q_proj", 32, 32, 0)], "lora_te2_", 18)},
    }
    paths = {}
    for name, state_dict in files.items():
        paths[name] = outdir / f"tiny-lora-{name}.safetensors"
        save_state_dict(state_dict, paths[name])
    return paths


def make_tiny_variants(outdir: str | Path, tiny_sd15: Path) -> dict[str, Path]:
    """tiny-sd15 in the other layouts in circulation (each with the tiny yaml beside it), and a tiny VAE:

    fp16 / bf16 files, a .ckpt without the state_dict wrapper, text encoder keys without `text_model.`, EMA-only
    (UNet under CompVis' `model_ema.*` names) and EMA + non-EMA (the EMA copy differs) files, a file without VAE and
    one without text encoder; a VAE with other random weights as bare keys (`encoder.*`, like
    vae-ft-mse-840000-ema-pruned, plus its training-only `loss.*` key) and with `first_stage_model.*` keys; and a
    checkpoint with that VAE beside it as NAME.vae.safetensors.
    """
    import shutil

    from imaginairy.models.weights import load_state_dict

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    base = {k: v.clone() for k, v in load_state_dict(tiny_sd15).items()}
    config = tiny_sd15.with_suffix(".yaml")
    unet = {k: v for k, v in base.items() if k.startswith("model.diffusion_model.")}
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v for k, v in unet.items()}
    others = {k: v for k, v in base.items() if k not in unet}
    generator = torch.Generator().manual_seed(21)
    vae = {k[len("first_stage_model."):]: v + 0.05 * torch.randn(v.shape, generator=generator)
           for k, v in base.items() if k.startswith("first_stage_model.")}
    flat_clip = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
                 for k, v in base.items()}
    variants = {
        "fp16": ({k: v.half() if v.is_floating_point() else v for k, v in base.items()}, ".safetensors"),
        "bf16": ({k: v.bfloat16() if v.is_floating_point() else v for k, v in base.items()}, ".safetensors"),
        "unwrapped": (base, ".pt"),
        "flat-clip": (flat_clip, ".safetensors"),
        "ema-only": ({**ema, **others}, ".safetensors"),
        "ema-and-non-ema": ({**{k: v + 1 for k, v in ema.items()}, **base}, ".safetensors"),
        "no-vae": ({k: v for k, v in base.items() if not k.startswith("first_stage_model.")}, ".safetensors"),
        "no-text-encoder": ({k: v for k, v in base.items() if not k.startswith("cond_stage_model.")}, ".safetensors"),
        "sidecar": (base, ".safetensors"),
    }
    paths = {}
    for name, (state_dict, suffix) in variants.items():
        paths[name] = outdir / f"tiny-sd15-{name}{suffix}"
        save_state_dict(state_dict, paths[name])
        shutil.copy(config, paths[name].with_suffix(".yaml"))
    paths["vae"] = outdir / "tiny-vae.safetensors"
    save_state_dict({**vae, "model_ema.decay": torch.tensor(0.9999), "loss.logvar": torch.zeros(())}, paths["vae"])
    paths["vae-compvis"] = outdir / "tiny-vae-compvis.ckpt"
    save_state_dict({"first_stage_model." + k: v for k, v in vae.items()}, paths["vae-compvis"])
    save_state_dict(vae, outdir / "tiny-sd15-sidecar.vae.safetensors")
    return paths


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
    for path in make_tiny_embeddings(Path(arguments[0]) / "embeddings").values():
        print(path)
    if with_helpers:
        for path in make_tiny_helpers(arguments[0]).values():
            print(path)
