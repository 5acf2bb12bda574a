"""Tiny random-weight enhancer models in the real checkpoint layouts, for tests.

Each builder writes one file with seeded random weights that loads through the same code as the real
weights. Run as a script to write all of them into a folder:

    python scripts/tiny_enhancers.py OUTDIR
"""

import sys
from pathlib import Path

import torch

TINY_REALESRGAN_FILE = "tiny-RealESRGAN_x4plus.pth"
TINY_CODEFORMER_FILE = "tiny-codeformer.pth"
TINY_BLIP_DIR = "tiny-blip-image-captioning-base"
TINY_SAFETY_CHECKER_DIR = "tiny-stable-diffusion-safety-checker"

# RealESRGAN x4plus is an RRDBNet with 64 features, 23 blocks and 32 growth channels; spandrel fixes the growth
# channels at 32 but reads the features and blocks from the shapes
TINY_RRDB_FEATURES = 4
TINY_RRDB_BLOCKS = 1
RRDB_GROWTH_CHANNELS = 32
RRDB_DENSE_BLOCKS_PER_BLOCK = 3
RRDB_CONVS_PER_DENSE_BLOCK = 5


def make_tiny_realesrgan(path) -> Path:
    """A 4x RRDBNet with the keys of RealESRGAN_x4plus.pth ({"params_ema": {conv_first, body.N.rdbM.convK, ...}})."""
    generator = torch.Generator().manual_seed(0)
    features, growth = TINY_RRDB_FEATURES, RRDB_GROWTH_CHANNELS
    state_dict = _conv("conv_first", 3, features, generator)
    for block in range(TINY_RRDB_BLOCKS):
        for dense_block in range(1, RRDB_DENSE_BLOCKS_PER_BLOCK + 1):
            for conv in range(1, RRDB_CONVS_PER_DENSE_BLOCK + 1):
                in_channels = features + (conv - 1) * growth
                out_channels = features if conv == RRDB_CONVS_PER_DENSE_BLOCK else growth
                name = f"body.{block}.rdb{dense_block}.conv{conv}"
                state_dict |= _conv(name, in_channels, out_channels, generator)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        state_dict |= _conv(name, features, features, generator)
    # a small last layer around mid-gray keeps the random output inside [0, 1] instead of clipped
    state_dict |= _conv("conv_last", features, 3, generator, scale=0.3)
    state_dict["conv_last.bias"] = torch.full((3,), 0.5)
    return _save({"params_ema": state_dict}, path)


def make_tiny_codeformer(path) -> Path:
    """A CodeFormer with the official key layout ({"params_ema": ...}), shrunk where the architecture allows.

    Only the transformer (width, depth, codebook size) and the set of encoder-generator fusion levels can shrink;
    the VQ autoencoder is fixed by the architecture (about 64M parameters), so the file is stored in float16
    (about 130 MB) and is cast to float32 when loaded.
    """
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(0)
    model = CodeFormer(
        dim_embd=16,
        n_head=8,
        n_layers=1,
        codebook_size=8,
        latent_size=256,
        connect_list=["512"],
    )
    state_dict = {name: tensor.to(torch.float16) for name, tensor in model.state_dict().items()}
    return _save({"params_ema": state_dict}, path)


# BLIP's tokenizer is BERT WordPiece; captioning needs these special tokens ([DEC] starts a caption)
TINY_BLIP_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
TINY_BLIP_WORDS = (
    "a an the of on in with and at by near under over two three some this is are there photo picture painting"
    " drawing image view close up man woman person people child boy girl dog cat horse bird fish cow sheep"
    " elephant bear zebra giraffe car bus truck train boat plane bicycle street road city house building room"
    " kitchen table chair bed couch window door wall floor sky cloud sun moon tree flower grass field forest"
    " mountain hill river lake sea ocean beach sand snow water rock stone bridge tower church castle garden park"
    " red green blue yellow orange purple pink black white gray brown dark light bright small large big little"
    " old young new sitting standing walking running lying flying playing eating holding wearing looking riding"
    " shirt hat dress coat glasses phone book cup plate food pizza cake fruit apple banana bowl bottle clock sign"
    " lamp computer screen keyboard ball bag umbrella kite surfboard skateboard smiling colorful smoke scenic"
    " landscape portrait face hand hair eye night day morning evening ##s ##ing ##ed ##er ##ly"
).split()
TINY_VISION_LAYERS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
TINY_IMAGE_SIZE = 32  # pixels: 4 x 4 patches of 8
TINY_PATCH_SIZE = 8
TINY_SAFETY_PROJECTION = 16
SAFETY_CONCEPTS = 17
SAFETY_SPECIAL_CARE_CONCEPTS = 3


def make_tiny_blip(path) -> Path:
    """A BLIP captioning model folder laid out like `Salesforce/blip-image-captioning-base` (config.json,
    model.safetensors, processor and tokenizer files), with a vocab.txt written here: BLIP's special tokens and
    a few hundred words."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join([*TINY_BLIP_SPECIAL_TOKENS, *TINY_BLIP_WORDS]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(path, bos_token="[DEC]")
    token_ids = dict(zip(TINY_BLIP_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(TINY_BLIP_SPECIAL_TOKENS))))
    config = BlipConfig(
        vision_config={**TINY_VISION_LAYERS, "image_size": TINY_IMAGE_SIZE, "patch_size": TINY_PATCH_SIZE},
        text_config={
            **TINY_VISION_LAYERS,
            "vocab_size": len(tokenizer),
            "encoder_hidden_size": TINY_VISION_LAYERS["hidden_size"],
            "max_position_embeddings": 64,
            "bos_token_id": token_ids["[DEC]"],
            "eos_token_id": token_ids["[SEP]"],
            "sep_token_id": token_ids["[SEP]"],
            "pad_token_id": token_ids["[PAD]"],
        },
        projection_dim=TINY_VISION_LAYERS["hidden_size"],
        image_text_hidden_size=TINY_VISION_LAYERS["hidden_size"],
    )
    model = BlipForConditionalGeneration(config)
    _randomize(model, torch.Generator().manual_seed(0))
    model.save_pretrained(path)
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_tiny_safety_checker(path, *, concept_threshold: float | None = None) -> Path:
    """A safety checker folder laid out like `CompVis/stable-diffusion-safety-checker`: config.json (a CLIPConfig),
    model.safetensors with the checkpoint's keys (vision_model.vision_model.*, visual_projection.weight,
    concept_embeds, special_care_embeds and their *_weights thresholds, plus the legacy position_ids buffer old
    checkpoints carry) and preprocessor_config.json (a CLIPImageProcessor).

    The thresholds are seeded random, or with `concept_threshold` every concept threshold is that value and no
    special-care concept can fire: -1.5 flags every image, 1.5 none.
    """
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPVisionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = CLIPConfig(
        text_config=TINY_VISION_LAYERS,
        vision_config={**TINY_VISION_LAYERS, "image_size": TINY_IMAGE_SIZE, "patch_size": TINY_PATCH_SIZE},
        projection_dim=TINY_SAFETY_PROJECTION,
        architectures=["StableDiffusionSafetyChecker"],
    )
    generator = torch.Generator().manual_seed(0)
    vision_model = CLIPVisionModel(config.vision_config)
    _randomize(vision_model, generator)
    hidden_size, projection_dim = TINY_VISION_LAYERS["hidden_size"], TINY_SAFETY_PROJECTION
    position_count = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2 + 1
    concept_thresholds = 0.3 + 0.3 * torch.rand(SAFETY_CONCEPTS, generator=generator)
    special_care_thresholds = 0.3 + 0.3 * torch.rand(SAFETY_SPECIAL_CARE_CONCEPTS, generator=generator)
    if concept_threshold is not None:
        concept_thresholds = torch.full((SAFETY_CONCEPTS,), float(concept_threshold))
        special_care_thresholds = torch.full((SAFETY_SPECIAL_CARE_CONCEPTS,), 2.0)
    state_dict = {f"vision_model.{name}": tensor for name, tensor in vision_model.state_dict().items()}
    state_dict |= {
        "vision_model.vision_model.embeddings.position_ids": torch.arange(position_count).unsqueeze(0),
        "visual_projection.weight": torch.randn(projection_dim, hidden_size, generator=generator) / hidden_size**0.5,
        "concept_embeds": torch.randn(SAFETY_CONCEPTS, projection_dim, generator=generator),
        "special_care_embeds": torch.randn(SAFETY_SPECIAL_CARE_CONCEPTS, projection_dim, generator=generator),
        "concept_embeds_weights": concept_thresholds,
        "special_care_embeds_weights": special_care_thresholds,
    }
    config.save_pretrained(path)
    save_file({name: tensor.contiguous() for name, tensor in state_dict.items()}, str(path / "model.safetensors"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=TINY_IMAGE_SIZE)
    image_processor.save_pretrained(path)
    return path


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter from a seeded normal: matrices scaled by 1/sqrt(fan-in), norm weights near 1, biases near 0."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


TINY_ENHANCER_BUILDERS = [
    (make_tiny_realesrgan, TINY_REALESRGAN_FILE),
    (make_tiny_codeformer, TINY_CODEFORMER_FILE),
    (make_tiny_blip, TINY_BLIP_DIR),
    (make_tiny_safety_checker, TINY_SAFETY_CHECKER_DIR),
]


def _conv(name: str, in_channels: int, out_channels: int, generator: torch.Generator, scale: float = 1.0) -> dict:
    fan_in = in_channels * 3 * 3
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * scale * (2 / fan_in) ** 0.5
    return {f"{name}.weight": weight, f"{name}.bias": torch.zeros(out_channels)}


def _save(checkpoint: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python scripts/tiny_enhancers.py OUTDIR")
    outdir = Path(argv[0])
    for build, file_name in TINY_ENHANCER_BUILDERS:
        print(build(outdir / file_name))


if __name__ == "__main__":
    main(sys.argv[1:])
