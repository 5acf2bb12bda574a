"""diffusers (a test-only dependency) as the numerical reference: its pipelines built from one of our checkpoint files
with diffusers' own converters, and schedulers configured to take the same steps as our samplers."""

from __future__ import annotations

from pathlib import Path

import yaml
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.loaders import single_file_utils as convert
from k_diffusion import external

from imaginairy.models.weights import load_state_dict
from imaginairy.samplers import NoiseSchedule

SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def diffusers_unet_and_vae(weights_path: Path) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """The UNet and VAE of the CompVis checkpoint at `weights_path` (its yaml beside it), converted by diffusers."""
    checkpoint = load_state_dict(weights_path)
    original_config = yaml.safe_load(weights_path.with_suffix(".yaml").read_text())
    unet_config = convert.create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(convert.convert_ldm_unet_checkpoint(checkpoint, unet_config))
    vae_config = convert.create_vae_diffusers_config_from_ldm(original_config, checkpoint)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert.convert_ldm_vae_checkpoint(checkpoint, vae_config))
    return unet, vae


def diffusers_pipeline(pipeline_class, weights_path: Path, scheduler, **components):
    """`pipeline_class` (StableDiffusionPipeline, StableDiffusionInpaintPipeline) with the UNet and VAE of the
    checkpoint at `weights_path`, converted by diffusers; the text encoder is left out (tests pass prompt_embeds).
    `components` are further pipeline components (a ControlNet pipeline's `controlnet`)."""
    unet, vae = diffusers_unet_and_vae(weights_path)
    return pipeline_class(vae=vae.eval(), text_encoder=None, tokenizer=None, unet=unet.eval(), scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, requires_safety_checker=False, **components)


def scheduler_and_call(sampler_type: str, steps: int, prediction_type: str = "epsilon"):
    """The diffusers scheduler equivalent to our `sampler_type`, and the pipeline-call arguments that make it take
    our steps: DDIM as SD configures it ("leading" spacing, offset 1); for k_euler our sigmas passed explicitly,
    since diffusers interpolates them linearly in sigma and k-diffusion in log sigma ("linspace" spacing makes
    diffusers start from noise * sigma_max, as k-diffusion does)."""
    if sampler_type == "ddim":
        scheduler = DDIMScheduler(**SD_SCHEDULE, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                                  timestep_spacing="leading", prediction_type=prediction_type)
        return scheduler, {"num_inference_steps": steps}
    if sampler_type == "k_euler":
        alphas_cumprod = NoiseSchedule(0.00085, 0.012, 1000).alphas_cumprod().float()
        sigmas = external.DiscreteEpsDDPMDenoiser(None, alphas_cumprod, quantize=False).get_sigmas(steps)
        scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type=prediction_type, timestep_spacing="linspace")
        return scheduler, {"sigmas": sigmas.tolist()}
    raise ValueError(f"no diffusers equivalent set up for {sampler_type}")


def sdxl_aware_unet_config(original_config: dict, checkpoint: dict) -> dict:
    """diffusers' UNet config from the CompVis/SGM one. diffusers recognises SDXL's added embedding only at the real
    context widths (2048 base, 1280 refiner); at toy widths its "text_time" settings are set here as it sets them
    there (256 features per size number)."""
    config = convert.create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    unet_params = original_config["model"]["params"]["unet_config"]["params"]
    if unet_params.get("adm_in_channels") is not None:
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=unet_params["adm_in_channels"])
    return config


def clip_tokenizer(folder: Path, pad_token: str | None = None):
    """transformers' CLIPTokenizer over vocab/merges files written from open_clip's bundled BPE file (the CLIP
    vocabulary: 256 bytes, their end-of-word forms, the merges, then start/end of text). SDXL's tokenizer_2 pads
    with "!" (id 0)."""
    import gzip
    import json

    import open_clip
    from transformers import CLIPTokenizer

    with gzip.open(open_clip.tokenizer.default_bpe(), "rt", encoding="utf-8") as lines:
        merges = lines.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    alphabet = [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    extra = {"pad_token": pad_token, "model_max_length": 77} if pad_token else {"model_max_length": 77}
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), **extra)


def sdxl_pipeline(pipeline_class, weights_path: Path, scheduler, folder: Path):
    """`pipeline_class` (StableDiffusionXLPipeline, ...Img2ImgPipeline for the refiner, ...InpaintPipeline) loaded by
    diffusers' own single-file loader from our checkpoint file, offline: the component configs (diffusers format)
    are written to `folder` from the checkpoint's yaml, the tokenizers built from open_clip's vocabulary."""
    import json

    import torch
    from transformers import CLIPTextConfig

    checkpoint = load_state_dict(weights_path)
    original_config = yaml.safe_load(weights_path.with_suffix(".yaml").read_text())
    params = original_config["model"]["params"]
    configs = {
        "unet": sdxl_aware_unet_config(original_config, checkpoint),
        "vae": convert.create_vae_diffusers_config_from_ldm(original_config, checkpoint),
    }
    components = {"scheduler": scheduler}
    text_encoder_names = []
    for embedder in params["cond_stage_config"]["params"]["emb_models"]:
        kind, text = embedder["target"].rsplit(".", 1)[-1], embedder.get("params", {})
        if kind == "FrozenCLIPEmbedder":
            configs["text_encoder"] = CLIPTextConfig(
                hidden_size=text["hidden_size"], num_hidden_layers=text["num_hidden_layers"],
                num_attention_heads=text["num_attention_heads"], intermediate_size=text["intermediate_size"],
                hidden_act="quick_gelu", attn_implementation="sdpa").to_dict()
            text_encoder_names.append("text_encoder")
        elif kind == "FrozenOpenCLIPEmbedder2":
            configs["text_encoder_2"] = CLIPTextConfig(
                hidden_size=text["width"], num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
                intermediate_size=4 * text["width"], projection_dim=text["output_dim"], hidden_act="gelu",
                attn_implementation="sdpa").to_dict()
            text_encoder_names.append("text_encoder_2")
    for name, config in configs.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(config))
    components["tokenizer_2"] = clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    if "text_encoder" in configs:
        components["tokenizer"] = clip_tokenizer(folder / "tokenizer")
    else:  # the refiner: text_encoder_2 only
        components.update(tokenizer=None, text_encoder=None)
    index = {"_class_name": pipeline_class.__name__, "force_zeros_for_empty_prompt": "text_encoder" in configs,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder": ["transformers", "CLIPTextModel"] if "text_encoder" in configs else [None, None],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", type(scheduler).__name__]}
    if "text_encoder" not in configs:
        index["requires_aesthetics_score"] = True
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = pipeline_class.from_single_file(str(weights_path), config=str(folder), local_files_only=True,
                                           torch_dtype=torch.float32, **components)
    return pipe.to("cpu")


def inpainting_start(reference, image, mask, noise, sampler_type: str, steps: int):
    """What an inpainting reference pipeline starts from, computed as our pipeline does (the VAE posterior's mean):
    (masked-image latent, the init latent noised to the first timestep, that run's scheduler)."""
    import torch

    from imaginairy.utils.images import pil_to_tensor

    scale = reference.vae.config.scaling_factor
    pixels = pil_to_tensor(image)
    repaint = pil_to_tensor(mask.convert("RGB"))[:, :1] > 0
    with torch.inference_mode():
        init_latent = reference.vae.encode(pixels).latent_dist.mean * scale
        masked_image_latents = reference.vae.encode(pixels * ~repaint).latent_dist.mean * scale
    start_scheduler, call = scheduler_and_call(sampler_type, steps)
    start_scheduler.set_timesteps(**call)
    start = start_scheduler.add_noise(init_latent, noise, start_scheduler.timesteps[:1])
    return masked_image_latents, start, start_scheduler
