"""The A1111 prompt parser against the examples A1111 documents.

The expected spans are the ones listed in the docstring of A1111's `modules/prompt_parser.py`
`parse_prompt_attention` (AUTOMATIC1111/stable-diffusion-webui); the floats are A1111's own, which our parser
reproduces exactly because it multiplies the same factors in the same order.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaginairy.prompts.syntax import Span, literal_prompt, parse_prompt_attention

A1111_DOCUMENTED_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
         (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_DOCUMENTED_EXAMPLES)
def test_a1111_documented_examples(text, expected):
    assert parse_prompt_attention(text) == [[Span(*span) for span in expected]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("((word))", [("word", 1.1 * 1.1)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("(word:1.3)", [("word", 1.3)]),
        ("(word: 0.7 )", [("word", 0.7)]),  # current A1111 allows spaces around the number
        ("(masterpiece:1.2), best", [("masterpiece", 1.2), (", best", 1.0)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        ("(neg:-1)", [("neg", -1.0)]),
        ("\\\\ and \\", [("\\ and \\", 1.0)]),  # an escaped backslash, then a lone one
        ("", [("", 1.0)]),
    ],
)
def test_emphasis(text, expected):
    assert parse_prompt_attention(text) == [[Span(*span) for span in expected]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a) b] c", [("a) b] c", 1.0)]),  # closing brackets with nothing open are text
        ("x:1.2) y", [("x:1.2) y", 1.0)]),  # a weight with no "(" before it is text
        ("[unclosed", [("unclosed", 1 / 1.1)]),  # an open bracket weights the rest, as A1111 does
        ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # a number that does not parse is text (A1111 raises ValueError)
        ("a: b", [("a: b", 1.0)]),
        ("((a)", [("a", 1.1 * 1.1)]),
        ("(a]", [("a]", 1.1)]),
    ],
)
def test_malformed_text_is_taken_as_a1111_takes_it(text, expected):
    assert parse_prompt_attention(text) == [[Span(*span) for span in expected]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [[("a", 1.0)], [("b", 1.0)]]),
        ("a, BREAK (b) BREAK", [[("a,", 1.0)], [("b", 1.1)], [("", 1.0)]]),
        ("BREAK a", [[("", 1.0)], [("a", 1.0)]]),
        ("(a BREAK b)", [[("a", 1.1)], [("b", 1.1)]]),  # A1111 would read "break" at weight -1.1 here
        ("a break b, BREAKING", [[("a break b, BREAKING", 1.0)]]),  # only the capitalised word on its own
    ],
)
def test_break_splits_into_chunks(text, expected):
    assert parse_prompt_attention(text) == [[Span(*span) for span in chunk] for chunk in expected]


def test_plain_syntax_keeps_the_text_as_typed():
    assert literal_prompt("(a:1.5) BREAK [b]") == [[Span("(a:1.5) BREAK [b]", 1.0)]]


PROMPT_ALPHABET = st.sampled_from(list("ab ,:.()[]\\0123456789+-") + ["BREAK", " BREAK ", "1.5", ":1.2)", "é"])


@settings(max_examples=400, deadline=None)
@given(st.lists(PROMPT_ALPHABET, max_size=40).map("".join) | st.text(max_size=60))
def test_any_text_parses_without_error(text):
    chunks = parse_prompt_attention(text)
    assert chunks and all(chunk for chunk in chunks)
    assert all(isinstance(span.text, str) and math.isfinite(span.weight) for chunk in chunks for span in chunk)
    # The parser only removes syntax: without BREAK, every letter of the text is still there, in order.
    if "BREAK" not in text:
        assert [c for chunk in chunks for span in chunk for c in span.text if c.isalpha()] == [
            c for c in text if c.isalpha()
        ]
