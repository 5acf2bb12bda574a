"""The mask language: a boolean expression over phrases that CLIPSeg finds in an image.

    fruit OR fruit stem{*1.5}
    (bowl | plate) AND NOT fruit
    !(sky{+0.1} & cloud){/2}

- A *phrase* is one or more lowercase words (letters a-z, digits, `-`, `'`) separated by spaces; runs of spaces
  count as one. Lowercase `and`, `or`, `not` are words, not operators.
- `OR` / `|`: the larger of the two mask values (elementwise max); `AND` / `&`: the smaller (min);
  `NOT` / `!`: `1 - mask`. The keywords are case-sensitive.
- A strength modifier after a phrase or a parenthesised group, `{*1.5}`, `{/2}`, `{+0.1}`, `{-0.1}`, multiplies,
  divides, adds or subtracts, then clamps the result back into [0, 1]. Several may follow each other.
- Precedence, tightest first: modifier, NOT, AND, OR. Parentheses group.

`parse_mask_expression(text)` gives a tree of the dataclasses below; `phrases(tree)` the distinct phrases to
segment; `evaluate(tree, masks)` combines one mask per phrase into the expression's mask. pyparsing and torch are
imported only when a prompt is parsed or evaluated, so a command line can import this module cheaply.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imaginairy.errors import MaskExpressionError

if TYPE_CHECKING:
    import torch

MODIFIER_OPERATORS = ("*", "/", "+", "-")
PHRASE_PATTERN = r"[a-z0-9'\-]+(?:\s+[a-z0-9'\-]+)*"
NUMBER_PATTERN = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# the token shown as "found" in a syntax error: a word, or else one character
FOUND_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9'\-]+|\S")


@dataclass(frozen=True)
class Phrase:
    """A text to segment, e.g. `fruit stem`."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Not:
    """`1 - operand`."""

    operand: MaskNode

    def __str__(self) -> str:
        return f"(NOT {self.operand})"


@dataclass(frozen=True)
class And:
    """The elementwise minimum of two or more operands."""

    operands: tuple[MaskNode, ...]

    def __str__(self) -> str:
        return "(" + " AND ".join(str(operand) for operand in self.operands) + ")"


@dataclass(frozen=True)
class Or:
    """The elementwise maximum of two or more operands."""

    operands: tuple[MaskNode, ...]

    def __str__(self) -> str:
        return "(" + " OR ".join(str(operand) for operand in self.operands) + ")"


@dataclass(frozen=True)
class Modified:
    """`operand` with a strength modifier applied: `operator` is one of `* / + -`, then clamped to [0, 1]."""

    operand: MaskNode
    operator: str
    amount: float

    def __str__(self) -> str:
        return f"{self.operand}{{{self.operator}{_number_text(self.amount)}}}"


MaskNode = Phrase | Not | And | Or | Modified


def parse_mask_expression(text: str) -> MaskNode:
    """The tree of a mask prompt. Raises MaskExpressionError naming the column and what was expected there."""
    import pyparsing

    if not text.strip():
        raise MaskExpressionError("mask prompt is empty: describe what to mask, e.g. 'fruit OR bowl'")
    try:
        return _grammar().parse_string(text, parse_all=True)[0]
    except pyparsing.ParseBaseException as err:
        raise MaskExpressionError(_syntax_error_message(text, err.loc, err.msg)) from None
    except RecursionError:
        message = f"mask prompt is nested too deeply (parentheses or NOT): {_shortened(text)}"
        raise MaskExpressionError(message) from None


def phrases(node: MaskNode) -> list[str]:
    """The distinct phrases in `node`, in the order they first appear."""
    return list(dict.fromkeys(_phrase_texts(node)))


def evaluate(node: MaskNode, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mask `node` describes, from one mask per phrase (values in [0, 1], all the same shape).

    The result is in [0, 1] as well. A phrase missing from `masks` raises KeyError.
    """
    import torch

    if isinstance(node, Phrase):
        return masks[node.text]
    if isinstance(node, Not):
        return 1 - evaluate(node.operand, masks)
    if isinstance(node, And):
        return functools.reduce(torch.minimum, (evaluate(operand, masks) for operand in node.operands))
    if isinstance(node, Or):
        return functools.reduce(torch.maximum, (evaluate(operand, masks) for operand in node.operands))
    if isinstance(node, Modified):
        return apply_modifier(evaluate(node.operand, masks), node.operator, node.amount)
    raise TypeError(f"not a mask expression node: {node!r}")


def apply_modifier(mask: torch.Tensor, operator: str, amount: float) -> torch.Tensor:
    """`mask` multiplied, divided, increased or decreased by `amount`, clamped to [0, 1].

    In float32 a huge amount can overflow to infinity and `0 * inf` (or `0 / 0` for a tiny divisor) is NaN;
    mathematically those values are 0, which is what NaN is replaced with.
    """
    import torch

    if operator == "*":
        changed = mask * amount
    elif operator == "/":
        changed = mask / amount
    elif operator == "+":
        changed = mask + amount
    elif operator == "-":
        changed = mask - amount
    else:
        raise ValueError(f"unknown mask modifier operator {operator!r}; use one of {' '.join(MODIFIER_OPERATORS)}")
    return torch.nan_to_num(changed, nan=0.0).clamp(0, 1)


def _phrase_texts(node: MaskNode):
    if isinstance(node, Phrase):
        yield node.text
    elif isinstance(node, (Not, Modified)):
        yield from _phrase_texts(node.operand)
    else:
        for operand in node.operands:
            yield from _phrase_texts(operand)


def _shortened(text: str, length: int = 40) -> str:
    return repr(text) if len(text) <= length else repr(text[:length]) + "..."


def _number_text(amount: float) -> str:
    """The shortest text that reads back as `amount`, without a trailing `.0`."""
    return repr(amount).removesuffix(".0")


def _syntax_error_message(text: str, position: int, pyparsing_message: str) -> str:
    expected = pyparsing_message.removeprefix("Expected ")
    found_match = FOUND_TOKEN_PATTERN.search(text, position)
    found = repr(found_match.group()) if found_match else "the end"
    return f"mask prompt: expected {expected} at column {position + 1}, found {found}: {text!r}"


def _phrase_node(tokens) -> Phrase:
    return Phrase(" ".join(tokens[0].split()))


def _checked_amount(text: str, position: int, tokens) -> float:
    amount = float(tokens[0])
    if not math.isfinite(amount):
        raise MaskExpressionError(f"mask prompt: number too large at column {position + 1}: {text!r}")
    return amount


def _check_divisor(text: str, position: int, tokens) -> None:
    operator, amount = tokens
    if operator == "/" and amount == 0:
        raise MaskExpressionError(f"mask prompt: division by zero at column {position + 1}: {text!r}")


def _modified_node(tokens) -> MaskNode:
    node = tokens[0]
    for operator, amount in tokens[1:]:
        node = Modified(node, operator, amount)
    return node


def _not_node(tokens) -> Not:
    return Not(tokens[0])


def _and_node(tokens) -> MaskNode:
    return tokens[0] if len(tokens) == 1 else And(tuple(tokens))


def _or_node(tokens) -> MaskNode:
    return tokens[0] if len(tokens) == 1 else Or(tuple(tokens))


@functools.cache
def _grammar():
    """The pyparsing grammar; `-` after an operator stops backtracking, so errors point where the text went wrong."""
    import pyparsing as pp

    not_operator = pp.Suppress(pp.Keyword("NOT") | pp.Literal("!"))
    and_operator = pp.Suppress(pp.Keyword("AND") | pp.Literal("&"))
    or_operator = pp.Suppress(pp.Keyword("OR") | pp.Literal("|"))

    expression = pp.Forward()
    phrase = pp.Regex(PHRASE_PATTERN).set_name("a phrase").set_parse_action(_phrase_node)
    number = pp.Regex(NUMBER_PATTERN).set_name("a number").set_parse_action(_checked_amount)
    modifier_operator = pp.one_of(MODIFIER_OPERATORS).set_name("one of * / + - after '{'")
    modifier = (
        pp.Suppress("{") - modifier_operator - number - pp.Suppress(pp.Literal("}").set_name("'}'"))
    ).set_parse_action(_check_divisor)
    group = pp.Suppress("(") - expression - pp.Suppress(pp.Literal(")").set_name("AND, OR, a modifier or ')'"))
    operand = (phrase | group) + pp.ZeroOrMore(pp.Group(modifier))
    operand.set_parse_action(_modified_node)

    negatable = pp.Forward()
    negatable <<= ((not_operator - negatable).set_parse_action(_not_node) | operand).set_name(
        "a lowercase phrase, NOT or '('"
    )
    conjunction = (negatable + pp.ZeroOrMore(and_operator - negatable)).set_parse_action(_and_node)
    disjunction = (conjunction + pp.ZeroOrMore(or_operator - conjunction)).set_parse_action(_or_node)
    expression <<= disjunction
    return expression + pp.StringEnd().set_name("AND, OR, a modifier or the end")
