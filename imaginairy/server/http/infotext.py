"""AUTOMATIC1111's infotext (the PNG `parameters` text) -> a dict of its settings, as A1111's png-info answers it.

The format: the prompt (one or more lines), an optional line starting "Negative prompt:", and a last line of
`Key: value` pairs separated by ", ", a value with a comma or colon written as a JSON string. "Size: 512x768" also
gives "Size-1" and "Size-2", as A1111 does.
"""

from __future__ import annotations

import json
import re

NEGATIVE_PREFIX = "Negative prompt:"
# a `Key: value` pair: the value a JSON string, or text up to the next ", "
SETTING = re.compile(r'\s*([\w \-/+().]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, str]:
    lines = text.strip().split("\n")
    settings_line = lines[-1] if len(lines) > 1 and SETTING.match(lines[-1]) and "Steps:" in lines[-1] else ""
    if settings_line:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)
    parsed = {"Prompt": "\n".join(prompt).strip(), "Negative prompt": "\n".join(negative).strip()}
    for key, value in SETTING.findall(settings_line):
        value = value.strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        parsed[key.strip()] = value
        size = re.fullmatch(r"(\d+)x(\d+)", value) if isinstance(value, str) else None
        if size:
            parsed[f"{key.strip()}-1"], parsed[f"{key.strip()}-2"] = size.group(1), size.group(2)
    return parsed
