"""A toy-size CLIPSeg with seeded random weights, in the file layout of the CIDAS/clipseg-rd64-refined repo.

    python scripts/tiny_clipseg.py OUTDIR

Nothing is downloaded: the tokenizer files are built from the CLIP byte-level BPE merges that ship inside the
open_clip package (`bpe_simple_vocab_16e6.txt.gz`), so the tokenizer is the real CLIP one (49408 tokens).
"""

import gzip
import json
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

SEED = 0
CLIP_MERGE_COUNT = 49152 - 256 - 2  # CLIP's BPE: 49152 tokens minus the 256 byte tokens and 2 special tokens
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
PROCESSOR_IMAGE_SIZE = 96  # unlike the model's 64, as the real repo preprocesses to 352 for a 224 model

TINY_CONFIG = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 16,
    },
    "projection_dim": 16,
    "extract_layers": [0, 1],
    "reduce_dim": 16,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32,
    "conditional_layer": 0,
    "use_complex_transposed_convolution": True,
}


def make_tiny_clipseg(outdir) -> Path:
    """Write a tiny CLIPSeg repo folder (config, model.safetensors, tokenizer and processor files) to `outdir`."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(**TINY_CONFIG))
    model.save_pretrained(outdir, safe_serialization=True)
    write_clip_tokenizer_files(outdir)
    write_json(outdir / "preprocessor_config.json", preprocessor_config(PROCESSOR_IMAGE_SIZE))
    return outdir


def clip_merges() -> list[tuple[str, str]]:
    """CLIP's BPE merges, in rank order, from the file open_clip ships (its first line is a header)."""
    merges_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(merges_path, "rt", encoding="utf-8").read().split("\n")
    return [tuple(line.split()) for line in lines[1 : 1 + CLIP_MERGE_COUNT]]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """The CLIP token ids: the 256 byte symbols, the same with the end-of-word mark `</w>`, one token per merge,
    then the start and end tokens (49406, 49407)."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    tokens += ["".join(merge) for merge in merges] + [START_TOKEN, END_TOKEN]
    return {token: token_id for token_id, token in enumerate(tokens)}


def write_clip_tokenizer_files(outdir: Path) -> None:
    """vocab.json, merges.txt and the tokenizer configs, as a transformers CLIPTokenizer reads them."""
    merges = clip_merges()
    write_json(outdir / "vocab.json", clip_vocab(merges))
    merge_lines = ["#version: 0.2"] + [" ".join(merge) for merge in merges]
    (outdir / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    write_json(
        outdir / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "processor_class": "CLIPSegProcessor",
            "model_max_length": 77,
            "do_lower_case": True,
            "bos_token": START_TOKEN,
            "eos_token": END_TOKEN,
            "unk_token": END_TOKEN,
            "pad_token": END_TOKEN,
        },
    )
    write_json(
        outdir / "special_tokens_map.json",
        {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": END_TOKEN},
    )


def preprocessor_config(image_size: int) -> dict:
    """A ViT image processor: resize to a square, scale to [0, 1], normalise with the ImageNet mean and std."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "processor_class": "CLIPSegProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/tiny_clipseg.py OUTDIR")
    print(make_tiny_clipseg(sys.argv[1]))
