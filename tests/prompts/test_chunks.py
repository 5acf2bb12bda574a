"""Prompt -> 75-token chunks, checked token by token against chunk layouts written out by hand from A1111's rules
(`modules/sd_hijack_clip.py`, `tokenize_line`)."""

import logging

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imaginairy.modules.tokenizer import END_OF_TEXT, START_OF_TEXT
from imaginairy.prompts.chunks import EmbeddingTriggers, prompt_chunks
from imaginairy.prompts.embeddings import Embedding
from imaginairy.prompts.syntax import literal_prompt, parse_prompt_attention

CAT, DOG, COMMA = 2368, 1929, 267  # CLIP BPE ids of "cat", "dog", ","


def chunks_of(text, **kwargs):
    return prompt_chunks(parse_prompt_attention(text), **kwargs)


def framed(tokens):
    return [START_OF_TEXT, *tokens, *[END_OF_TEXT] * (75 - len(tokens)), END_OF_TEXT]


def test_short_prompt_is_one_padded_chunk():
    (chunk,) = chunks_of("cat (dog:1.5)")
    assert chunk.tokens == framed([CAT, DOG])
    assert chunk.weights == [1.0, 1.0, 1.5] + [1.0] * 74
    assert chunk.prompt_tokens == 2


def test_empty_prompt_is_one_empty_chunk():
    (chunk,) = chunks_of("")
    assert chunk.tokens == framed([]) and chunk.weights == [1.0] * 77


def test_long_prompt_is_cut_into_75_token_chunks():
    chunks = chunks_of(" ".join(["cat"] * 80) + " dog")
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 75), framed([CAT] * 5 + [DOG])]


def test_exactly_75_tokens_fill_one_chunk():
    assert [chunk.tokens for chunk in chunks_of(" ".join(["cat"] * 75))] == [framed([CAT] * 75)]


def test_break_starts_a_new_chunk():
    chunks = chunks_of("cat BREAK (dog)")
    assert [chunk.tokens for chunk in chunks] == [framed([CAT]), framed([DOG])]
    assert chunks[1].weights[1] == 1.1


def test_text_after_a_near_comma_moves_to_the_next_chunk():
    """A1111's word wrap: the chunk is full and its last comma is at most 20 tokens back."""
    words = ["cat"] * 70 + [","] + ["dog"] * 10
    chunks = chunks_of(" ".join(words))
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 70 + [COMMA]), framed([DOG] * 10)]


def test_a_far_comma_does_not_wrap():
    words = ["cat"] * 10 + [","] + ["dog"] * 70
    chunks = chunks_of(" ".join(words))
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 10 + [COMMA] + [DOG] * 64), framed([DOG] * 6)]


def test_wrapping_can_be_turned_off():
    words = ["cat"] * 70 + [","] + ["dog"] * 10
    chunks = chunks_of(" ".join(words), wrap_tokens=0)
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 70 + [COMMA] + [DOG] * 4), framed([DOG] * 6)]


def embedding(name, count):
    return Embedding(name=name, vectors=torch.ones(count, 4), path=None)


def test_embedding_trigger_becomes_its_vectors():
    style = embedding("tinystyle", 3)
    (chunk,) = chunks_of("cat (tinystyle:1.2) dog", triggers=EmbeddingTriggers([style]))
    assert chunk.tokens == framed([CAT, 0, 0, 0, DOG])
    assert chunk.weights[1:6] == [1.0, 1.2, 1.2, 1.2, 1.0]
    assert chunk.embeddings == [(2, style)]


def test_embedding_never_straddles_two_chunks():
    style = embedding("tinystyle", 3)
    chunks = chunks_of(" ".join(["cat"] * 73) + " tinystyle", triggers=EmbeddingTriggers([style]))
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 73), framed([0, 0, 0])]
    assert chunks[1].embeddings == [(1, style)]


def test_embedding_moved_by_word_wrap_keeps_its_place():
    style = embedding("tinystyle", 3)
    words = ["cat"] * 70 + [",", "tinystyle", "dog", "dog", "dog"]
    chunks = chunks_of(" ".join(words), triggers=EmbeddingTriggers([style]))
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 70 + [COMMA]), framed([0, 0, 0, DOG, DOG, DOG])]
    assert chunks[0].embeddings == [] and chunks[1].embeddings == [(1, style)]


def test_longest_trigger_name_wins():
    short, long = embedding("bad", 1), embedding("bad-hands", 2)
    (chunk,) = chunks_of("bad-hands bad", triggers=EmbeddingTriggers([short, long]))
    assert chunk.embeddings == [(1, long), (3, short)]


def test_plain_syntax_keeps_one_window_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="imaginairy.prompts.chunks"):
        chunks = prompt_chunks(literal_prompt(" ".join(["cat"] * 80) + ", dog"), wrap_tokens=0, max_chunks=1)
    assert [chunk.tokens for chunk in chunks] == [framed([CAT] * 75)]
    assert "dropped the last 7 tokens" in caplog.text


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*"ab ,:()[]\\1.", "cat ", " BREAK ", "tinystyle"]), max_size=300).map("".join))
def test_any_prompt_gives_whole_chunks(text):
    chunks = chunks_of(text, triggers=EmbeddingTriggers([embedding("tinystyle", 3)]))
    for chunk in chunks:
        assert len(chunk.tokens) == len(chunk.weights) == 77
        assert chunk.tokens[0] == START_OF_TEXT and chunk.tokens[chunk.prompt_tokens + 1] == END_OF_TEXT
        assert all(1 <= offset and offset + 3 <= chunk.prompt_tokens + 1 for offset, _ in chunk.embeddings)
