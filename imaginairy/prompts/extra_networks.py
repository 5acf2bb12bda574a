"""AUTOMATIC1111's "extra networks" tags in prompt text: `<lora:NAME:WEIGHT>` (also spelled `<lyco:...>`).

A tag names a LoRA file (by name in the models folder, or by path) and its weight (default 1); it is taken out of
the text before the text is encoded, as the web UI does. A1111 reads `<lora:NAME:TE:UNET>` as separate weights for
the text encoder and the UNet; one weight for both is what imaginairy merges, so a third part is refused.
"""

from __future__ import annotations

import re

from imaginairy.errors import InvalidInputError

# A1111 (modules/extra_networks.py): `<kind:arguments>`, the arguments split on ":"
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
UNSUPPORTED_KINDS = ("hypernet",)


def extract_lora_tags(text: str) -> tuple[str, list[tuple[str, float]]]:
    """(text without its LoRA tags, [(name or path, weight), ...] in the order they appear)."""
    loras: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        kind, arguments = match[1].lower(), match[2]
        if kind in UNSUPPORTED_KINDS:
            raise InvalidInputError(f"{match[0]}: {kind} networks are not supported; use a LoRA (<lora:NAME:WEIGHT>)")
        if kind not in LORA_KINDS:
            return match[0]
        name, *weights = (part.strip() for part in arguments.split(":"))
        if not name or len(weights) > 1:
            raise InvalidInputError(
                f"{match[0]}: write a LoRA tag as <lora:NAME> or <lora:NAME:WEIGHT> (one weight for the text encoder"
                " and the UNet)"
            )
        try:
            weight = float(weights[0]) if weights else 1.0
        except ValueError:
            raise InvalidInputError(f"{match[0]}: the weight {weights[0]!r} is not a number") from None
        loras.append((name, weight))
        return ""

    return EXTRA_NETWORK_TAG.sub(take, text), loras
