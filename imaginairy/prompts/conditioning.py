"""Prompts -> the conditioning the UNet cross-attends to: step 1 of the pipeline.

Each prompt text is parsed (A1111 syntax, or taken literally), cut into 75-token chunks (`chunks.py`) and every chunk
is encoded on its own by the text encoder; a chunk's hidden states are then scaled token by token by the emphasis
weights with A1111's mean restoration ("Original" emphasis, `modules/sd_emphasis.py`):

    z = hidden states of the chunk [77, dim];  z' = z * weight[token];  z'' = z' * mean(z) / mean(z')

The chunks of a prompt are concatenated along the token axis ([1, 77 * chunks, dim]); the UNet's cross-attention
takes any number of tokens.

Weighted prompts (`WeightedPrompt`) are blended after that, as imaginairy always has: the weighted mean of the
prompts' conditionings. So emphasis weighs tokens inside one prompt text, and a WeightedPrompt weight weighs whole
prompt texts against each other. Before the mean, and between the positive and the negative side (which the
samplers batch together for classifier-free guidance), conditionings of fewer chunks are padded with the encoded
empty prompt, one chunk at a time, as A1111's "Pad prompt/negative prompt" (`CFGDenoiser.pad_cond_uncond`) does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from imaginairy.errors import EmbeddingError, InvalidInputError
from imaginairy.modules.tokenizer import END_OF_TEXT
from imaginairy.prompts.chunks import Chunk, EmbeddingTriggers, prompt_chunks
from imaginairy.prompts.embeddings import Embedding, find_embeddings
from imaginairy.prompts.syntax import PROMPT_SYNTAXES, Span, literal_prompt, parse_prompt_attention

if TYPE_CHECKING:
    from torch import nn

    from imaginairy.schema import WeightedPrompt

@dataclasses.dataclass(frozen=True)
class TextConditioning:
    """Conditioning for classifier-free guidance: `cond` and `uncond` [1, 77 * chunks, dim] (float32, the same
    number of chunks), and the embeddings the prompts used (for the image's metadata)."""

    cond: torch.Tensor
    uncond: torch.Tensor
    embeddings: tuple[Embedding, ...] = ()


def encode_conditioning(
    text_encoder: nn.Module,
    prompts: Sequence[WeightedPrompt],
    negative_prompts: Sequence[WeightedPrompt],
    *,
    syntax: str = "a1111",
    embedding_paths: Sequence[str | os.PathLike] = (),
    clip_skip: int = 1,
) -> TextConditioning:
    """The text conditioning of weighted positive and negative prompts (each list may be empty: the empty prompt).

    `syntax` "a1111" reads emphasis and BREAK and encodes any length; "plain" encodes the text as typed in one
    77-token window (longer prompts are cut, with a warning), as imaginairy did before. `embedding_paths` are
    textual-inversion files or folders; an embedding is used where its name appears in a prompt. `clip_skip` is
    A1111's (1 = the last layer, 2 = the penultimate, ...), on the encoders that allow it (SD 1.x).
    """
    if syntax not in PROMPT_SYNTAXES:
        raise InvalidInputError(f"prompt_syntax {syntax!r} is not supported; choose one of: {PROMPT_SYNTAXES}.")
    max_clip_skip = getattr(text_encoder, "max_clip_skip", 1)
    if not 1 <= clip_skip <= max_clip_skip:
        raise InvalidInputError(
            f"clip_skip {clip_skip} does not fit this model's text encoder ({type(text_encoder).__name__}): "
            + (f"it takes 1 to {max_clip_skip}." if max_clip_skip > 1 else "its layer is fixed, use clip_skip 1.")
        )
    positive = [(p.text, p.weight) for p in prompts] or [("", 1.0)]
    negative = [(p.text, p.weight) for p in negative_prompts] or [("", 1.0)]
    texts = [text for text, _weight in positive + negative]
    embeddings = find_embeddings(texts, embedding_paths)
    _check_embedding_width(embeddings, text_encoder.token_embedding.embedding_dim)
    triggers = EmbeddingTriggers(embeddings)
    if syntax == "a1111":
        chunk_lists = [prompt_chunks(parse_prompt_attention(text), triggers) for text in texts]
    else:
        chunk_lists = [prompt_chunks(literal_prompt(text), triggers, wrap_tokens=0, max_chunks=1) for text in texts]
    empty_chunk = prompt_chunks([[Span("", 1.0)]])[0]
    all_chunks = [chunk for chunks in chunk_lists for chunk in chunks] + [empty_chunk]
    encoded = list(encode_chunks(text_encoder, all_chunks, clip_skip).float().split(1))
    empty = encoded.pop()
    chunk_count = max(len(chunks) for chunks in chunk_lists)
    conditionings = []
    for chunks in chunk_lists:
        mine, encoded = encoded[: len(chunks)], encoded[len(chunks) :]
        conditionings.append(torch.cat(mine + [empty] * (chunk_count - len(chunks)), dim=1))
    cond = _weighted_mean(conditionings[: len(positive)], [weight for _text, weight in positive])
    uncond = _weighted_mean(conditionings[len(positive) :], [weight for _text, weight in negative])
    used = {id(e): e for chunks in chunk_lists for chunk in chunks for _offset, e in chunk.embeddings}
    return TextConditioning(cond=cond, uncond=uncond, embeddings=tuple(used.values()))


def encode_chunks(text_encoder: nn.Module, chunks: list[Chunk], clip_skip: int = 1) -> torch.Tensor:
    """Hidden states of each chunk [len(chunks), 77, dim] (float32, or float64 from a float64 encoder): embeddings'
    vectors in place of their placeholder tokens, emphasis applied with A1111's mean restoration, chunk by chunk."""
    table = text_encoder.token_embedding
    device = table.weight.device
    token_ids = torch.tensor([_padded(chunk.tokens, text_encoder.pad_token) for chunk in chunks], device=device)
    token_vectors = table(token_ids)
    for row, chunk in enumerate(chunks):
        for offset, embedding in chunk.embeddings:
            vectors = embedding.vectors.to(device=device, dtype=token_vectors.dtype)
            token_vectors[row, offset : offset + len(vectors)] = vectors
    hidden = text_encoder.encode_token_embeddings(token_vectors, clip_skip=clip_skip)
    hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
    weights = torch.tensor([chunk.weights for chunk in chunks], dtype=hidden.dtype, device=hidden.device)
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    weighted = hidden * weights[:, :, None]
    return weighted * (original_mean / weighted.mean(dim=(1, 2), keepdim=True))


def _padded(tokens: list[int], pad_token: int) -> list[int]:
    """A chunk's ids with the encoder's padding id after the first end-of-text (SD 2.x pads with 0; SD 1.x pads
    with end-of-text, so nothing changes), as A1111's `process_tokens` does."""
    end = tokens.index(END_OF_TEXT)
    return tokens[: end + 1] + [pad_token] * (len(tokens) - end - 1)


def _weighted_mean(conditionings: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    stacked = torch.cat(conditionings)
    weights = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    return (stacked * weights[:, None, None]).sum(dim=0, keepdim=True) / weights.sum()


def _check_embedding_width(embeddings: list[Embedding], width: int) -> None:
    for embedding in embeddings:
        if embedding.vectors.shape[1] != width:
            raise EmbeddingError(
                f"Embedding {embedding.path} has {embedding.vectors.shape[1]}-dimensional vectors; this model's text "
                f"encoder takes {width} (an embedding for another model family: SD 1.x is 768, SD 2.x 1024)."
            )
