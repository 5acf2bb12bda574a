"""The generation settings embedded in every saved image, and reading them back.

Each file carries the settings twice:
- `parameters`: the plain-text "infotext" format of the AUTOMATIC1111 web UI, which other Stable Diffusion
  tools display and parse (PNG text chunk `parameters`; JPEG EXIF UserComment);
- `imaginairy`: our own JSON, the exact settings (PNG text chunk `imaginairy`; JPEG EXIF ImageDescription).
"""

from __future__ import annotations

import json
import logging
import os
from typing import IO, TYPE_CHECKING, Any

from PIL import ExifTags, Image, PngImagePlugin

from imaginairy.errors import ImageLoadError
from imaginairy.samplers.table import A1111_SAMPLER_NAMES, A1111_SCHEDULE_NAMES, DEFAULT_SCHEDULE

if TYPE_CHECKING:
    from imaginairy.schema import ImaginePrompt

logger = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
IMAGINAIRY_KEY = "imaginairy"
JPEG_QUALITY = 95
JPEG_EXIF_LIMIT_BYTES = 65000  # a JPEG APP1 segment holds 64 KiB, headers included

EXIF_IMAGE_DESCRIPTION = ExifTags.Base.ImageDescription
EXIF_SOFTWARE = ExifTags.Base.Software
EXIF_USER_COMMENT = ExifTags.Base.UserComment
# The EXIF UserComment value starts with an 8-byte character code naming its encoding.
USER_COMMENT_UNICODE = b"UNICODE\0"
USER_COMMENT_ASCII = b"ASCII\0\0\0"

def imaginairy_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imaginairy")
    except PackageNotFoundError:
        return "unknown"


def build_metadata(prompt: ImaginePrompt, width: int, height: int) -> dict[str, Any]:
    """The settings of `prompt` with the actual image size and the imaginairy version."""
    return {**prompt.to_metadata(), "width": width, "height": height, "imaginairy_version": imaginairy_version()}


def weighted_prompt_text(weighted_prompts: list[dict]) -> str:
    """Weighted prompts ({"text", "weight"} dicts) in the web UI's composable syntax: "a :1.5 AND b"."""
    return " AND ".join(
        wp["text"] if wp["weight"] == 1 else f"{wp['text']} :{wp['weight']:g}" for wp in weighted_prompts
    )


def a1111_parameters(metadata: dict[str, Any]) -> str:
    """The settings as AUTOMATIC1111 infotext: prompt line, optional "Negative prompt:" line, "Key: value" line.

    With the files' hashes in `metadata` (imaginairy.api.resource_metadata), the resources are named as A1111 names
    them, so model sites recognise them: "Model hash" (10 hex), "VAE hash" + "VAE" (the file name), "Lora hashes"
    ("name: 12 hex, ..."), "TI hashes" (the embeddings a prompt triggered, likewise), and each LoRA as a
    `<lora:name:weight>` tag at the end of the prompt.
    """
    settings = {
        "Steps": metadata["steps"],
        "Sampler": A1111_SAMPLER_NAMES.get(metadata["sampler_type"], metadata["sampler_type"]),
        "CFG scale": f"{metadata['prompt_strength']:g}",
        "Seed": metadata["seed"],
        "Size": f"{metadata['width']}x{metadata['height']}",
    }
    if metadata.get("model_file"):
        settings["Model hash"] = metadata["model_file"]["hash"]
    settings["Model"] = metadata["model"]
    if metadata.get("vae_file"):
        settings["VAE hash"] = metadata["vae_file"]["hash"]
        settings["VAE"] = os.path.basename(metadata["vae_file"]["path"])
    if (metadata.get("clip_skip") or 1) > 1:
        settings["Clip skip"] = metadata["clip_skip"]
    if metadata.get("schedule", DEFAULT_SCHEDULE) != DEFAULT_SCHEDULE:
        settings["Schedule type"] = A1111_SCHEDULE_NAMES.get(metadata["schedule"], metadata["schedule"])
    if metadata.get("init_image") is not None:
        settings["Denoising strength"] = f"{round(1 - metadata['init_image_strength'], 4):g}"
    if metadata.get("ddim_eta"):
        settings["Eta"] = f"{metadata['ddim_eta']:g}"
    if metadata.get("tile_mode") == "xy":
        settings["Tiling"] = "True"
    elif metadata.get("tile_mode"):
        settings["Tile mode"] = metadata["tile_mode"]
    lora_files = metadata.get("lora_files") or []
    if lora_files:
        settings["Lora hashes"] = ", ".join(f"{_infotext_name(lora)}: {lora['hash']}" for lora in lora_files)
    embedding_files = metadata.get("embedding_files") or []
    if embedding_files:
        settings["TI hashes"] = ", ".join(f"{_infotext_name(e)}: {e['hash']}" for e in embedding_files)
    settings["Version"] = f"imaginairy {metadata.get('imaginairy_version', 'unknown')}"

    tags = "".join(f"<lora:{_infotext_name(lora)}:{lora['weight']:g}>" for lora in lora_files)
    lines = [" ".join(filter(None, (weighted_prompt_text(metadata["prompt"]), tags)))]
    negative = weighted_prompt_text(metadata["negative_prompt"])
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {_quote_a1111_value(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def _infotext_name(resource: dict) -> str:
    return resource["name"].replace(":", "").replace(",", "")  # as A1111 strips them from "Lora hashes" names


def _quote_a1111_value(value: Any) -> str:
    text = str(value)
    if any(char in text for char in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def write_image_with_metadata(img: Image.Image, file: IO[bytes], file_format: str, metadata: dict[str, Any]) -> None:
    """Encode `img` as `file_format` ("PNG" or "JPEG") into `file`, with both metadata forms embedded."""
    parameters = a1111_parameters(metadata)
    settings_json = json.dumps(metadata, ensure_ascii=True, sort_keys=True)
    if file_format == "PNG":
        png_info = PngImagePlugin.PngInfo()
        png_info.add_text(PARAMETERS_KEY, parameters)
        png_info.add_text(IMAGINAIRY_KEY, settings_json)
        img.save(file, format="PNG", pnginfo=png_info)
    elif file_format == "JPEG":
        img.convert("RGB").save(file, format="JPEG", quality=JPEG_QUALITY, exif=_jpeg_exif(parameters, settings_json))
    else:
        raise ValueError(f"Unsupported image format {file_format!r}; use 'PNG' or 'JPEG'.")


def _jpeg_exif(parameters: str, settings_json: str) -> Image.Exif:
    """The EXIF block holding both metadata forms. JPEG caps it at 64 KiB: what does not fit is left out (the
    parameters text first, then our JSON), with a warning that PNG keeps it all."""
    exif = Image.Exif()
    # Big-endian, like the files the web UI writes, so readers that assume UTF-16BE for UserComment agree.
    exif.endian = ">"
    exif[EXIF_SOFTWARE] = f"imaginairy {imaginairy_version()}"
    exif[EXIF_IMAGE_DESCRIPTION] = settings_json
    exif.get_ifd(ExifTags.IFD.Exif)[EXIF_USER_COMMENT] = USER_COMMENT_UNICODE + parameters.encode("utf-16-be")
    if len(exif.tobytes()) > JPEG_EXIF_LIMIT_BYTES:
        del exif.get_ifd(ExifTags.IFD.Exif)[EXIF_USER_COMMENT]
        if len(exif.tobytes()) > JPEG_EXIF_LIMIT_BYTES:
            del exif[EXIF_IMAGE_DESCRIPTION]
        logger.warning("The settings are too long for a JPEG's 64 KiB of EXIF and were not all embedded; "
                       "save as PNG to keep them")
    return exif


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The imaginairy settings embedded in a PNG or JPEG file, or {} when it has none."""
    settings_json = _read_embedded_texts(path)[IMAGINAIRY_KEY]
    if not settings_json:
        return {}
    try:
        settings = json.loads(settings_json)
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def read_parameters(path: str | os.PathLike) -> str | None:
    """The AUTOMATIC1111-style `parameters` text embedded in a PNG or JPEG file, or None."""
    return _read_embedded_texts(path)[PARAMETERS_KEY]


def _read_embedded_texts(path: str | os.PathLike) -> dict[str, str | None]:
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                return {key: img.info.get(key) for key in (PARAMETERS_KEY, IMAGINAIRY_KEY)}
            exif = img.getexif()
            return {
                PARAMETERS_KEY: _decode_user_comment(exif.get_ifd(ExifTags.IFD.Exif).get(EXIF_USER_COMMENT), exif),
                IMAGINAIRY_KEY: exif.get(EXIF_IMAGE_DESCRIPTION),
            }
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"Cannot read metadata of {os.fspath(path)}: {e}") from e


def _decode_user_comment(value: bytes | str | None, exif: Image.Exif) -> str | None:
    if value is None or isinstance(value, str):
        return value
    code, body = value[:8], value[8:]
    if code == USER_COMMENT_UNICODE:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16")
        return body.decode("utf-16-le" if exif.endian == "<" else "utf-16-be", errors="replace")
    if code == USER_COMMENT_ASCII:
        return body.decode("ascii", errors="replace")
    return body.decode("utf-8", errors="replace").rstrip("\0") or None
