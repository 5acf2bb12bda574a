"""What the server tells clients and writes to its log about things clients or the file system named.

Server-side file paths never reach a client (model files, the engines file, folders in error texts): they are
replaced by the engine id or the file's name. Strings a client sent are logged quoted and truncated, so a newline
cannot forge a log line and a 10 MB id cannot bloat the log.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imaginairy.server.engines import Engine

LOGGED_CHARS = 80
# an absolute POSIX or Windows path, up to a quote, a space or a closing bracket
ABSOLUTE_PATH = re.compile(r"(?:(?<=[\s'\"(=])|^)(?:/|[A-Za-z]:\\)[^\s'\"()]+")


def quoted(text: Any, limit: int = LOGGED_CHARS) -> str:
    """`text` as a quoted Python literal (newlines escaped), cut to `limit` characters with the length noted."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} chars)"


def public_text(text: str, engines: dict[str, Engine] | None = None) -> str:
    """`text` with every engine's model location replaced by its engine id and other absolute paths by their file
    name."""
    for engine in (engines or {}).values():
        for location in (engine.model, engine.model_config):
            if location and _is_path(location):
                text = text.replace(location, engine.id)
    return ABSOLUTE_PATH.sub(lambda match: PurePath(match.group(0)).name or "<path>", text)


def public_metadata(metadata: dict[str, Any], engine: Engine) -> dict[str, Any]:
    """The generation settings to embed in an image sent to a client: the model named by its engine id."""
    public = dict(metadata)
    public["model"] = engine.id
    if public.get("model_config"):
        public["model_config"] = PurePath(str(public["model_config"])).name
    for key in ("init_image", "mask_image"):
        if isinstance(public.get(key), str) and _is_path(public[key]):
            public[key] = PurePath(public[key]).name
    return public


def _is_path(location: str) -> bool:
    return not location.startswith(("hf://", "http://", "https://")) and ("/" in location or "\\" in location)
