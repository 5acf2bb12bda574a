import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imaginairy.errors import InvalidInputError, MaskExpressionError
from imaginairy.masking.expression import (
    And,
    Modified,
    Not,
    Or,
    Phrase,
    apply_modifier,
    evaluate,
    parse_mask_expression,
    phrases,
)

PARSED = [
    ("fruit", "fruit"),
    ("fruit stem", "fruit stem"),
    ("  fruit   stem  ", "fruit stem"),
    ("fruit and bowl or not plate", "fruit and bowl or not plate"),
    ("it's a x-ray 2", "it's a x-ray 2"),
    ("a OR b", "(a OR b)"),
    ("a | b", "(a OR b)"),
    ("a|b", "(a OR b)"),
    ("a AND b", "(a AND b)"),
    ("a & b", "(a AND b)"),
    ("a&b", "(a AND b)"),
    ("NOT a", "(NOT a)"),
    ("!a", "(NOT a)"),
    ("! a", "(NOT a)"),
    ("NOT NOT a", "(NOT (NOT a))"),
    ("a OR b OR c", "(a OR b OR c)"),
    ("a AND b AND c", "(a AND b AND c)"),
    ("a{*1.5}", "a{*1.5}"),
    ("a{/2}", "a{/2}"),
    ("a{+0.1}", "a{+0.1}"),
    ("a{-0.1}", "a{-0.1}"),
    ("a { * 2 }", "a{*2}"),
    ("a{*.5}", "a{*0.5}"),
    ("a{*1e3}", "a{*1000}"),
    ("a{*2}{+0.1}", "a{*2}{+0.1}"),
    ("fruit OR fruit stem{*1.5}", "(fruit OR fruit stem{*1.5})"),
    ("a OR b AND NOT c{*2}", "(a OR (b AND (NOT c{*2})))"),
    ("NOT a AND b", "((NOT a) AND b)"),
    ("a AND b OR c AND d", "((a AND b) OR (c AND d))"),
    ("(a OR b) AND c", "((a OR b) AND c)"),
    ("(a OR b){*2}", "(a OR b){*2}"),
    ("NOT (a OR b)", "(NOT (a OR b))"),
    ("!(sky{+0.1} & cloud){/2}", "(NOT (sky{+0.1} AND cloud){/2})"),
    ("((a))", "a"),
    ("((a OR (b AND (c OR d))))", "(a OR (b AND (c OR d)))"),
    ("(a OR b) OR c", "((a OR b) OR c)"),
]


@pytest.mark.parametrize(("text", "tree_text"), PARSED)
def test_parse_table(text, tree_text):
    tree = parse_mask_expression(text)
    assert str(tree) == tree_text
    assert parse_mask_expression(str(tree)) == tree


def test_precedence_modifier_not_and_or():
    assert parse_mask_expression("a OR b AND NOT c{*2}") == Or(
        (Phrase("a"), And((Phrase("b"), Not(Modified(Phrase("c"), "*", 2.0))))),
    )


def test_keyword_and_symbol_forms_give_the_same_tree():
    assert parse_mask_expression("NOT a AND b OR c") == parse_mask_expression("!a & b | c")


def test_lowercase_keywords_are_words():
    assert parse_mask_expression("salt and pepper") == Phrase("salt and pepper")


def test_phrases_are_distinct_and_in_order():
    tree = parse_mask_expression("bowl OR fruit AND NOT bowl{*2} OR fruit  stem OR fruit stem")
    assert phrases(tree) == ["bowl", "fruit", "fruit stem"]


def test_repr_names_the_node_types():
    expected = "Not(operand=Modified(operand=Phrase(text='a'), operator='/', amount=2.0))"
    assert repr(parse_mask_expression("!a{/2}")) == expected


SYNTAX_ERRORS = [
    ("fruit OR ", 10, "a lowercase phrase, NOT or '('", "the end"),
    ("fruit AND", 10, "a lowercase phrase, NOT or '('", "the end"),
    ("OR fruit", 1, "a lowercase phrase, NOT or '('", "'OR'"),
    ("Fruit", 1, "a lowercase phrase, NOT or '('", "'Fruit'"),
    (")", 1, "a lowercase phrase, NOT or '('", "')'"),
    ("a (b)", 3, "AND, OR, a modifier or the end", "'('"),
    ("a NOT b", 3, "AND, OR, a modifier or the end", "'NOT'"),
    ("a OR b)", 7, "AND, OR, a modifier or the end", "')'"),
    ("(a OR b", 8, "AND, OR, a modifier or ')'", "the end"),
    ("(a OR ()", 8, "a lowercase phrase, NOT or '('", "')'"),
    ("a{*}", 4, "a number", "'}'"),
    ("a{x2}", 3, "one of * / + - after '{'", "'x2'"),
    ("a{*2", 5, "'}'", "the end"),
    ("a{*-2}", 4, "a number", "'-2'"),
    ("a OR b AND !", 13, "a lowercase phrase, NOT or '('", "the end"),
]


@pytest.mark.parametrize(("text", "column", "expected", "found"), SYNTAX_ERRORS)
def test_syntax_errors_name_column_and_expectation(text, column, expected, found):
    with pytest.raises(MaskExpressionError) as raised:
        parse_mask_expression(text)
    message = str(raised.value)
    assert message == f"mask prompt: expected {expected} at column {column}, found {found}: {text!r}"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_expression_is_an_error(text):
    with pytest.raises(MaskExpressionError, match="empty"):
        parse_mask_expression(text)


@pytest.mark.parametrize(("text", "column"), [("a{/0}", 2), ("a OR b {/ 0.0}", 8), ("a{/0e5}", 2)])
def test_division_by_zero_is_an_error(text, column):
    with pytest.raises(MaskExpressionError, match=f"division by zero at column {column}"):
        parse_mask_expression(text)


def test_overflowing_number_is_an_error():
    with pytest.raises(MaskExpressionError, match="number too large at column 4"):
        parse_mask_expression("a{*" + "9" * 400 + "}")


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(MaskExpressionError, match="nested too deeply"):
        parse_mask_expression("(" * 500 + "a" + ")" * 500)


def test_mask_expression_error_is_a_usage_error():
    assert issubclass(MaskExpressionError, InvalidInputError)
    assert issubclass(MaskExpressionError, ValueError)


def test_error_message_is_one_line():
    with pytest.raises(MaskExpressionError) as raised:
        parse_mask_expression("a OR\n(b")
    assert "\n" not in str(raised.value)


A = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
B = torch.tensor([[1.0, 0.5], [0.25, 0.0]])
MASKS = {"a": A, "b": B}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", A),
        ("a OR b", torch.tensor([[1.0, 0.5], [0.5, 1.0]])),
        ("a AND b", torch.tensor([[0.0, 0.25], [0.25, 0.0]])),
        ("NOT a", torch.tensor([[1.0, 0.75], [0.5, 0.0]])),
        ("a{*3}", torch.tensor([[0.0, 0.75], [1.0, 1.0]])),
        ("a{/2}", torch.tensor([[0.0, 0.125], [0.25, 0.5]])),
        ("a{+0.5}", torch.tensor([[0.5, 0.75], [1.0, 1.0]])),
        ("a{-0.5}", torch.tensor([[0.0, 0.0], [0.0, 0.5]])),
        ("a{*2}{-0.5}", torch.tensor([[0.0, 0.0], [0.5, 0.5]])),
        ("a{-0.5}{*2}", torch.tensor([[0.0, 0.0], [0.0, 1.0]])),
        ("NOT a{*2}", torch.tensor([[1.0, 0.5], [0.0, 0.0]])),
        ("(NOT a){*2}", torch.tensor([[1.0, 1.0], [1.0, 0.0]])),
        ("a AND NOT a", torch.tensor([[0.0, 0.25], [0.5, 0.0]])),
        ("a OR b AND NOT b", torch.tensor([[0.0, 0.5], [0.5, 1.0]])),
        ("a{*1e300}", torch.tensor([[0.0, 1.0], [1.0, 1.0]])),
        ("a{/1e-300}", torch.tensor([[0.0, 1.0], [1.0, 1.0]])),
    ],
)
def test_evaluate(text, expected):
    assert torch.equal(evaluate(parse_mask_expression(text), MASKS), expected)


def test_evaluate_missing_phrase_raises_key_error():
    with pytest.raises(KeyError):
        evaluate(parse_mask_expression("a OR c"), MASKS)


def test_apply_modifier_rejects_unknown_operator():
    with pytest.raises(ValueError, match="unknown mask modifier"):
        apply_modifier(A, "%", 2.0)


WORDS = st.sampled_from(["fruit", "bowl", "stem", "sky", "a", "b", "it's", "x-ray", "2", "and", "or"])
PHRASE_TEXTS = st.lists(WORDS, min_size=1, max_size=3).map(" ".join)
SPACES = st.sampled_from(["", " ", "  "])
AMOUNTS = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False)


@st.composite
def modified_texts(draw, operands):
    operand = draw(operands)
    operator = draw(st.sampled_from("*/+-"))
    amount = draw(AMOUNTS.filter(lambda value: value != 0) if operator == "/" else AMOUNTS)
    return f"{operand}{draw(SPACES)}{{{operator}{amount!r}}}"


def _compound_texts(operands):
    space = SPACES
    binary_operator = st.sampled_from([" AND ", " OR ", "&", "|", " & ", " | "])
    return st.one_of(
        st.tuples(operands, binary_operator, operands).map("".join),
        st.tuples(st.sampled_from(["NOT ", "!", "! "]), operands).map("".join),
        st.tuples(st.just("("), space, operands, space, st.just(")")).map("".join),
        modified_texts(operands),
    )


EXPRESSION_TEXTS = st.recursive(PHRASE_TEXTS, _compound_texts, max_leaves=12)


@settings(max_examples=150, deadline=None, database=None)
@given(text=EXPRESSION_TEXTS, seed=st.integers(0, 2**32 - 1))
def test_random_valid_expressions_parse_and_evaluate_within_unit_range(text, seed):
    tree = parse_mask_expression(text)
    assert parse_mask_expression(str(tree)) == tree
    generator = torch.Generator().manual_seed(seed)
    masks = {phrase: torch.rand(3, 4, generator=generator) for phrase in phrases(tree)}
    masks.update({phrase: masks[phrase].round() for phrase in list(masks)[::2]})
    result = evaluate(tree, masks)
    assert result.shape == (3, 4)
    assert not torch.isnan(result).any()
    assert result.min() >= 0 and result.max() <= 1


GRAMMAR_CHARACTERS = "ab ()&|!{}*/+-.019eANDORT\n"


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.one_of(st.text(), st.text(alphabet=GRAMMAR_CHARACTERS)))
def test_random_strings_raise_only_the_parse_error(text):
    try:
        tree = parse_mask_expression(text)
    except MaskExpressionError as err:
        assert "\n" not in str(err)
        assert re.match(r"mask prompt", str(err))
    else:
        assert phrases(tree)
