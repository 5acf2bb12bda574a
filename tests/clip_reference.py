"""transformers' CLIP tokenizer and text model as test references, built offline.

The tokenizer's vocabulary and merges files are written from open_clip's bundled BPE file (the vocabulary OpenAI
released with CLIP), so no download is needed; the text model is loaded through diffusers' own conversion of a
CompVis checkpoint's `cond_stage_model.*` keys.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

MERGE_COUNT = 49152 - 256 - 2  # what the CLIP vocabulary uses of the merges in its BPE file


def byte_to_unicode_table() -> list[str]:
    """GPT-2/CLIP byte-level alphabet in vocabulary order: the printable bytes stand for themselves and come first,
    then the other bytes, mapped to characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """The Hugging Face CLIP tokenizer over vocab/merges files written into `folder`."""
    bpe_file = open_clip.tokenizer.default_bpe()
    with gzip.open(bpe_file, "rt", encoding="utf-8") as lines:
        merges = lines.read().split("\n")[1 : MERGE_COUNT + 1]
    alphabet = byte_to_unicode_table()
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)


def load_flattened_clip_text_model(model: CLIPTextModel, converted: dict) -> CLIPTextModel:
    """transformers 5 flattened CLIPTextModel, so the `text_model.` prefix diffusers' conversion leaves is dropped,
    as diffusers itself does when it builds the model."""
    state_dict = {key.removeprefix("text_model."): value for key, value in converted.items()}
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def reference_clip_text_model(checkpoint: dict, **config) -> CLIPTextModel:
    """A CLIPTextModel (SDPA attention) with the `cond_stage_model.*` weights of a CompVis SD 1.x checkpoint (the
    legacy `position_ids` buffer some checkpoints carry is not a transformers 5 parameter and is left out)."""
    model = CLIPTextModel(CLIPTextConfig(**config, hidden_act="quick_gelu", attn_implementation="sdpa"))
    converted = convert_ldm_clip_checkpoint(checkpoint)
    converted = {key: value for key, value in converted.items() if not key.endswith("embeddings.position_ids")}
    return load_flattened_clip_text_model(model, converted)
