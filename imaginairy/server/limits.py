"""Limits of one request, the same for both protocols; the library itself accepts more, a server keeps each
request's cost (time, memory, answer size) bounded."""

from __future__ import annotations

from imaginairy.errors import InvalidInputError

MAX_SIDE = 2048
MIN_SIDE = 64
SIZE_MULTIPLE = 8
MAX_STEPS = 150
MAX_SAMPLES = 10
MAX_INPUT_IMAGE_PIXELS = 4096 * 4096
SEED_MODULUS = 2**32  # the Stability API's Artifact.seed is a uint32; A1111 seeds are taken in the same range
# Only the first 77 tokens of each 75-token chunk reach the text encoder and the image's metadata embeds the prompt
# twice, so a prompt far beyond what a model uses only makes answers larger; this bound is generous for chunked
# prompts (over 1,000 tokens) and keeps each image's metadata small.
MAX_PROMPT_CHARS = 8000


def check_prompt_text(text: str, field: str = "prompt") -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInputError(f"{field} is {len(text)} characters, more than this server accepts "
                                f"({MAX_PROMPT_CHARS}); shorten it.")


def check_side(value: int, field: str) -> int:
    if value % SIZE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
        raise InvalidInputError(f"{field} must be a multiple of {SIZE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE} pixels, "
                                f"got {value}.")
    return value


def check_steps(value: int) -> int:
    if not 1 <= value <= MAX_STEPS:
        raise InvalidInputError(f"steps must be from 1 to {MAX_STEPS}, got {value}.")
    return value
