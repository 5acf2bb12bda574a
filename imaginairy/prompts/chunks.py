"""Weighted spans -> 75-token chunks of token ids, per-token weights and the places embeddings go.

As A1111's `FrozenCLIPEmbedderWithCustomWords.tokenize_line` (`modules/sd_hijack_clip.py`) does it:

- each span is tokenized on its own (no start/end tokens); its tokens take the span's weight;
- a chunk holds 75 prompt tokens; a full chunk is closed and the next begins. When the chunk is full and the
  last comma in it is at most `WRAP_TOKENS` (A1111's "Prompt word wrap length limit", default 20) tokens back, the
  tokens after that comma move to the next chunk, so a short phrase is not cut in two;
- a BREAK closes the current chunk (even an empty one);
- a textual-inversion trigger (its name's tokens) becomes its vectors; they never straddle two chunks;
- a closed chunk is padded to 75 with end-of-text tokens (weight 1) and framed by start- and end-of-text:
  77 tokens, the text encoder's window.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING

from imaginairy.errors import EmbeddingError
from imaginairy.modules.tokenizer import END_OF_TEXT, START_OF_TEXT, text_token_ids
from imaginairy.prompts.syntax import Span

if TYPE_CHECKING:
    from imaginairy.prompts.embeddings import Embedding

logger = logging.getLogger(__name__)

CHUNK_TOKENS = 75
WRAP_TOKENS = 20
EMBEDDING_PLACEHOLDER = 0  # the id A1111 puts where embedding vectors go (replaced before the transformer runs)


@dataclasses.dataclass
class Chunk:
    """One text-encoder window: 77 token ids, their weights, (offset, embedding) of the embeddings in it, and how many
    of its tokens are the prompt's (the rest is start, end and padding)."""

    tokens: list[int] = dataclasses.field(default_factory=list)
    weights: list[float] = dataclasses.field(default_factory=list)
    embeddings: list[tuple[int, Embedding]] = dataclasses.field(default_factory=list)
    prompt_tokens: int = 0


@functools.lru_cache(maxsize=1)
def comma_token() -> int:
    return text_token_ids(",")[0]


class EmbeddingTriggers:
    """Finds textual-inversion triggers in token ids: each embedding's name, tokenized, longest name first."""

    def __init__(self, embeddings: list[Embedding]):
        self.by_first_token: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in embeddings:
            ids = text_token_ids(embedding.name)
            if ids:
                self.by_first_token.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self.by_first_token.values():
            candidates.sort(key=lambda candidate: len(candidate[0]), reverse=True)

    def match(self, tokens: list[int], position: int) -> tuple[Embedding | None, int]:
        """(embedding, number of prompt tokens its name takes) at `position`, or (None, 0)."""
        for ids, embedding in self.by_first_token.get(tokens[position], ()):
            if tokens[position : position + len(ids)] == ids:
                return embedding, len(ids)
        return None, 0


def prompt_chunks(
    segments: list[list[Span]],
    triggers: EmbeddingTriggers | None = None,
    *,
    wrap_tokens: int = WRAP_TOKENS,
    max_chunks: int | None = None,
) -> list[Chunk]:
    """The chunks of a parsed prompt (segments are the parts between BREAKs). `max_chunks` keeps only the first
    chunks, with a warning saying how many prompt tokens were dropped (the "plain" syntax keeps one)."""
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        current.prompt_tokens = len(current.tokens)
        padding = CHUNK_TOKENS - current.prompt_tokens
        current.tokens = [START_OF_TEXT, *current.tokens, *[END_OF_TEXT] * padding, END_OF_TEXT]
        current.weights = [1.0, *current.weights, *[1.0] * padding, 1.0]
        current.embeddings = [(offset + 1, embedding) for offset, embedding in current.embeddings]
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for segment_index, segment in enumerate(segments):
        if segment_index:
            close()
        for span in segment:
            tokens = text_token_ids(span.text)
            position = 0
            while position < len(tokens):
                if tokens[position] == comma_token():
                    last_comma = len(current.tokens)
                elif (wrap_tokens and len(current.tokens) == CHUNK_TOKENS and last_comma != -1
                      and CHUNK_TOKENS - last_comma <= wrap_tokens):
                    moved = _split_after(current, last_comma + 1)
                    close()
                    current = moved
                if len(current.tokens) == CHUNK_TOKENS:
                    close()
                embedding, name_length = triggers.match(tokens, position) if triggers else (None, 0)
                if embedding is None:
                    current.tokens.append(tokens[position])
                    current.weights.append(span.weight)
                    position += 1
                    continue
                count = len(embedding.vectors)
                if len(current.tokens) + count > CHUNK_TOKENS:
                    close()
                current.embeddings.append((len(current.tokens), embedding))
                current.tokens += [EMBEDDING_PLACEHOLDER] * count
                current.weights += [span.weight] * count
                position += name_length
    if current.tokens or not chunks:
        close()
    if max_chunks is not None and len(chunks) > max_chunks:
        dropped = sum(chunk.prompt_tokens for chunk in chunks[max_chunks:])
        logger.warning("Prompt is too long for the text encoder: dropped the last %d tokens (limit %d)",
                       dropped, CHUNK_TOKENS * max_chunks)
        chunks = chunks[:max_chunks]
    return chunks


def _split_after(chunk: Chunk, position: int) -> Chunk:
    """Cut `chunk` at `position` (its tokens from there on are returned as a new, still open chunk)."""
    moved_embeddings = [(offset - position, embedding) for offset, embedding in chunk.embeddings if offset >= position]
    chunk.embeddings = [(offset, embedding) for offset, embedding in chunk.embeddings if offset < position]
    moved = Chunk(chunk.tokens[position:], chunk.weights[position:], moved_embeddings)
    del chunk.tokens[position:], chunk.weights[position:]
    return moved


def check_embedding_fits(name: str, vector_count: int) -> None:
    if vector_count > CHUNK_TOKENS:
        raise EmbeddingError(
            f"Embedding {name!r} has {vector_count} vectors; a prompt chunk holds at most {CHUNK_TOKENS}."
        )
