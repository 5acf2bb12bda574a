"""The AUTOMATIC1111 emphasis syntax: prompt text -> spans of text with attention weights, split at BREAK.

The rules are A1111's (`modules/prompt_parser.py`, `parse_prompt_attention`, whose docstring lists the examples the
tests check): `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)` multiplies it
by 1.3, brackets nest (their factors multiply), `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` stand for the character itself.
Malformed text never fails: a `)` or `]` with nothing open, a `:` outside `(...:number)` and a number that does not
parse are plain text, and a bracket left open weights everything after it, as A1111 does (`(unbalanced` gives
"unbalanced" at 1.1). Neighbouring spans of equal weight are merged.

`BREAK` (the word in capitals, on its own) ends the current 75-token chunk. A1111 turns a BREAK inside brackets into
the word "break" with a negative weight (its marker is the weight -1, which the brackets then multiply); here a BREAK
is a chunk boundary wherever it stands.
"""

from __future__ import annotations

import re
from typing import NamedTuple

PROMPT_SYNTAXES = ("a1111", "plain")  # A1111 emphasis and BREAK, or the text taken literally
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

# One lexical unit of the syntax, tried in this order: an escaped bracket or backslash, a lone backslash, an
# opening bracket, ":number)" (spaces allowed around the number, as in current A1111), a closing bracket, a run
# of plain text, a lone colon.
TOKEN = re.compile(
    r"""
    (?P<escaped>\\[()\[\]\\])
    | (?P<backslash>\\)
    | (?P<open>[(\[])
    | :\s*(?P<number>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


class Span(NamedTuple):
    """A piece of prompt text and the attention weight its tokens get."""

    text: str
    weight: float


class _Break:
    """Marks a BREAK in the flat list the parser builds (never weighted by brackets)."""


def parse_prompt_attention(text: str) -> list[list[Span]]:
    """The prompt as chunks-to-be (split at BREAK), each a list of weighted spans; never raises.

    A prompt without BREAK gives one list; an empty prompt gives `[[Span("", 1.0)]]`.
    """
    pieces: list[list | _Break] = []  # [text, weight] lists, mutable so brackets can scale them, and breaks
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not isinstance(piece, _Break):
                piece[1] *= factor

    for match in TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(0)
        if kind == "escaped":
            pieces.append([value[1], 1.0])
        elif kind == "open":
            (open_round if value == "(" else open_square).append(len(pieces))
        elif kind == "number" and open_round and (factor := _as_float(match.group("number"))) is not None:
            scale_from(open_round.pop(), factor)
        elif kind == "close" and value == ")" and open_round:
            scale_from(open_round.pop(), ROUND_FACTOR)
        elif kind == "close" and value == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_FACTOR)
        else:
            for index, part in enumerate(BREAK_WORD.split(value)):
                if index:
                    pieces.append(_Break())
                pieces.append([part, 1.0])
    for start in open_round:
        scale_from(start, ROUND_FACTOR)
    for start in open_square:
        scale_from(start, SQUARE_FACTOR)
    return _merged_chunks(pieces)


def literal_prompt(text: str) -> list[list[Span]]:
    """The prompt taken literally (prompt syntax "plain"): one span of weight 1, brackets and BREAK as typed."""
    return [[Span(text, 1.0)]]


def _as_float(number: str) -> float | None:
    """The weight in `(text:number)`, or None if it is no number (A1111 raises there; the text is kept instead)."""
    try:
        return float(number)
    except ValueError:
        return None


def _merged_chunks(pieces: list) -> list[list[Span]]:
    chunks: list[list[Span]] = [[]]
    for piece in pieces:
        if isinstance(piece, _Break):
            chunks.append([])
        elif not piece[0]:  # only next to a BREAK, so dropping it joins no spans that A1111 keeps apart
            continue
        elif chunks[-1] and chunks[-1][-1].weight == piece[1]:
            chunks[-1][-1] = Span(chunks[-1][-1].text + piece[0], piece[1])
        else:
            chunks[-1].append(Span(piece[0], piece[1]))
    return [chunk or [Span("", 1.0)] for chunk in chunks]
