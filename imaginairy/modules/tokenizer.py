"""CLIP byte-pair tokenizer for the Stable Diffusion text encoders.

The BPE vocabulary is the one OpenAI released with CLIP; open_clip ships it inside its package, so tokenizing
never needs a download. SD 1.x (Hugging Face CLIPTokenizer) and SD 2.x (open_clip) produce the same ids for a
prompt and differ only in the padding id, which callers pass in.
"""

import functools
import logging

import torch

logger = logging.getLogger(__name__)

START_OF_TEXT = 49406
END_OF_TEXT = 49407
SD1_PAD_TOKEN = END_OF_TEXT
SD2_PAD_TOKEN = 0
CONTEXT_LENGTH = 77


@functools.lru_cache(maxsize=1)
def clip_bpe_tokenizer():
    """The open_clip SimpleTokenizer over its bundled vocabulary; built once, it takes a moment."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def text_token_ids(text: str) -> list[int]:
    """BPE ids of one prompt, without start/end-of-text tokens."""
    return clip_bpe_tokenizer().encode(text)


def tokenize(texts: list[str], pad_token: int, max_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """Token ids [len(texts), max_length]: start-of-text, the prompt, end-of-text, then `pad_token`.

    Prompts longer than `max_length - 2` tokens are cut to fit and a warning says how many tokens were dropped.
    """
    room = max_length - 2
    rows = []
    for text in texts:
        ids = text_token_ids(text)
        if len(ids) > room:
            logger.warning(
                "Prompt is too long for the text encoder: dropped the last %d of %d tokens (limit %d): %r",
                len(ids) - room,
                len(ids),
                room,
                text if len(text) <= 80 else text[:77] + "...",
            )
            ids = ids[:room]
        row = [START_OF_TEXT, *ids, END_OF_TEXT]
        rows.append(row + [pad_token] * (max_length - len(row)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(texts), max_length)
