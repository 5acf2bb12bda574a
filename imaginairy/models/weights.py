"""Where model weights come from, and how they are read.

A weights *location* is one of:

- a local file path (`~` is expanded);
- an `https://` (or `http://`) URL, downloaded once into `weights_cache_dir()`;
- a Hugging Face hub file, `hf://<owner>/<repo>/<path/in/repo>`, with an optional revision written either
  after the repo (`hf://owner/repo@v1.0/model.safetensors`, as `huggingface_hub.HfFileSystem` writes it)
  or after the file (`hf://owner/repo/model.safetensors@v1.0`). Hub files live in the standard
  huggingface_hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`).

A file already in a cache is used without touching the network. `HF_HUB_OFFLINE=1` turns off all downloads,
URLs included. The environment is read on each call, not at import.

Checkpoints are data, never code: pickled (`.ckpt`, `.pt`, `.pth`, `.bin`) files are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imaginairy.errors import InvalidInputError, ModelLoadError, ModelNotFoundError, WeightsUnavailableError, first_line

if TYPE_CHECKING:
    import torch

HUB_SCHEME = "hf://"
URL_SCHEMES = ("https://", "http://")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
DOWNLOAD_STALL_SECONDS = 60  # a weights download fails when no byte arrived for this long
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# a safetensors file starts with the byte length of its JSON header (u64, little endian), then the header
SAFETENSORS_LENGTH_BYTES = 8
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces (MAX_HEADER_SIZE)

HUB_LOCATION_PATTERN = re.compile(
    r"^hf://(?P<owner>[^/@]+)/(?P<name>[^/@]+)(?:@(?P<repo_revision>[^/]+))?/(?P<filename>[^@]+?)"
    r"(?:@(?P<file_revision>[^/@]+))?$"
)


@dataclass(frozen=True)
class HubFile:
    """One file in a Hugging Face hub model repo."""

    repo_id: str
    filename: str
    revision: str | None = None


def parse_hub_location(location: str) -> HubFile:
    """`hf://owner/repo[@rev]/path/to/file[@rev]` -> HubFile."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    match = HUB_LOCATION_PATTERN.match(location)
    bad_location = InvalidInputError(
        f"Not a Hugging Face hub file location: {location!r}; write it as hf://owner/repo/path/to/file"
        " (optionally with @revision after the repo or the file)"
    )
    if match is None or (match["repo_revision"] and match["file_revision"]) or ".." in match["filename"].split("/"):
        raise bad_location
    repo_id = f"{match['owner']}/{match['name']}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise bad_location from err
    revision = match["repo_revision"] or match["file_revision"]
    return HubFile(repo_id=repo_id, filename=match["filename"], revision=revision)


def resolve_weights(location: str | os.PathLike, *, progress: bool = True, local_copy_hint: str | None = None) -> Path:
    """The local path of the weights file at `location`, downloading it into its cache if needed.

    Raises ModelNotFoundError for a local path that is not a file, and WeightsUnavailableError when a
    remote file is neither cached nor downloadable (offline, network error, not found); its message says how to use
    a local copy instead: `local_copy_hint` (e.g. "set SOME_VARIABLE=/path/to/file"), by default `--model PATH`.
    """
    location = os.fspath(location)
    if location.startswith(HUB_SCHEME):
        return resolve_hub_file(parse_hub_location(location), progress=progress, local_copy_hint=local_copy_hint)
    if location.startswith(URL_SCHEMES):
        return resolve_url(location, progress=progress, local_copy_hint=local_copy_hint)
    return existing_weights_file(Path(location).expanduser())


def existing_weights_file(path: Path) -> Path:
    if not path.is_file():
        raise ModelNotFoundError(f"Weights file not found: {path}; check the path (it must be a file, not a folder)")
    return path


def hub_offline() -> bool:
    """Whether hub and URL downloads are switched off: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is true now."""
    return any(_env_is_true(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder, as huggingface_hub chooses it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def weights_cache_dir() -> Path:
    """Where weights from plain URLs are kept: IMAGINAIRY_CACHE_DIR/weights, else ~/.cache/imaginairy/weights."""
    if os.environ.get("IMAGINAIRY_CACHE_DIR"):
        return Path(os.environ["IMAGINAIRY_CACHE_DIR"]).expanduser() / "weights"
    user_cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(user_cache).expanduser() / "imaginairy" / "weights"


def url_cache_path(url: str) -> Path:
    """The cache file for `url`: `<sha256 of the url, 16 hex>-<file name in the url>`."""
    url_hash = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return weights_cache_dir() / f"{url_hash}-{_url_file_name(url)}"


def resolve_hub_file(hub_file: HubFile, *, progress: bool = True, local_copy_hint: str | None = None) -> Path:
    """The cached path of a hub file, downloading it into the huggingface_hub cache if it is not there."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache_dir = hub_cache_dir()
    cached = try_to_load_from_cache(
        hub_file.repo_id, hub_file.filename, cache_dir=cache_dir, revision=hub_file.revision
    )
    if isinstance(cached, str):
        return Path(cached)
    offline = hub_offline()
    try:
        downloaded = hf_hub_download(
            hub_file.repo_id,
            hub_file.filename,
            revision=hub_file.revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            tqdm_class=None if progress else _silent_tqdm_class(),
        )
    except _hub_download_errors() as err:
        raise WeightsUnavailableError(
            _hub_file_unavailable_message(hub_file, cache_dir, offline, err, local_copy_hint)
        ) from err
    return Path(downloaded)


def resolve_hub_snapshot(
    repo_id: str,
    allow_patterns: list[str] | None = None,
    *,
    revision: str | None = None,
    progress: bool = True,
) -> Path:
    """The cached folder of a hub repo (only the files matching `allow_patterns`), for transformers-style models.

    The cache is tried first, so a cached snapshot never touches the network.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_dir = hub_cache_dir()
    download_options = {
        "revision": revision,
        "cache_dir": cache_dir,
        "allow_patterns": allow_patterns,
        "tqdm_class": None if progress else _silent_tqdm_class(),
    }
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **download_options))
    except LocalEntryNotFoundError as err:
        if hub_offline():
            raise WeightsUnavailableError(
                _hub_snapshot_unavailable_message(repo_id, allow_patterns, revision, cache_dir, True, err)
            ) from err
    try:
        return Path(snapshot_download(repo_id, **download_options))
    except _hub_download_errors() as err:
        raise WeightsUnavailableError(
            _hub_snapshot_unavailable_message(repo_id, allow_patterns, revision, cache_dir, False, err)
        ) from err


def resolve_url(url: str, *, progress: bool = True, local_copy_hint: str | None = None) -> Path:
    """The cached path of a weights file at `url`, downloading it into `weights_cache_dir()` if needed."""
    import http.client

    cached = url_cache_path(url)
    if cached.is_file():
        return cached
    if hub_offline():
        raise WeightsUnavailableError(
            _url_unavailable_message(url, cached, "offline mode (HF_HUB_OFFLINE) is on", local_copy_hint)
        )
    try:
        download_file(url, cached, progress=progress, stall_seconds=DOWNLOAD_STALL_SECONDS)
    except (OSError, http.client.HTTPException) as err:
        raise WeightsUnavailableError(
            _url_unavailable_message(url, cached, _download_failure_reason(err), local_copy_hint)
        ) from err
    return cached


def download_file(url: str, destination: Path, *, progress: bool = True,
                  stall_seconds: float = DOWNLOAD_STALL_SECONDS) -> None:
    """Download `url` to `destination` through `<destination>.partial`, renamed when complete.

    The download fails only when no byte arrived for `stall_seconds` (a slow line is not a failure); what was
    received stays in the partial file, and the next call resumes from there with an HTTP Range request (starting
    over when the server ignores it). So `destination` is either whole or absent.
    """
    import urllib.request

    from tqdm import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    partial_path = destination.with_name(destination.name + ".partial")
    have_bytes = partial_path.stat().st_size if partial_path.is_file() else 0
    headers = {"User-Agent": "imaginairy"}
    if have_bytes:
        headers["Range"] = f"bytes={have_bytes}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=stall_seconds) as response:
        resumed = have_bytes > 0 and response.status == 206
        received_bytes = have_bytes if resumed else 0
        remaining_bytes = _content_length(response)
        expected_bytes = None if remaining_bytes is None else received_bytes + remaining_bytes
        with partial_path.open("ab" if resumed else "wb") as partial, tqdm(
            total=expected_bytes,
            initial=received_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=_url_file_name(url),
            disable=not progress,
        ) as progress_bar:
            while chunk := response.read1(DOWNLOAD_CHUNK_BYTES):  # read1: whatever arrived, so the bar moves
                partial.write(chunk)
                received_bytes += len(chunk)
                progress_bar.update(len(chunk))
    if expected_bytes is not None and received_bytes != expected_bytes:
        raise ConnectionError(f"connection closed after {received_bytes} of {expected_bytes} bytes (run again to"
                              " resume)")
    os.replace(partial_path, destination)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors in a weights file, on the CPU, as {name: torch.Tensor}.

    `.safetensors` files are read with safetensors; `.ckpt`, `.pt`, `.pth` and `.bin` files with
    `torch.load(weights_only=True)` (memory-mapped when the file is in torch's zip format); any other suffix is
    read as safetensors when its header says so, else with torch. A top-level "state_dict" entry (CompVis
    checkpoints) is unwrapped; other wrappers, such as RealESRGAN's "params" / "params_ema", are left to the caller.
    Raises ModelLoadError for a corrupt or truncated file, or a pickle that needs code to load.
    """
    path = existing_weights_file(Path(path))
    if _is_safetensors_file(path):
        return _load_safetensors(path)
    return _load_torch_checkpoint(path)


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write {name: tensor} to `path`: `.safetensors` with safetensors, `.ckpt` as {"state_dict": ...} like
    CompVis checkpoints, `.pt` / `.pth` / `.bin` as the plain dict."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(_unshared_contiguous_tensors(state_dict), str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": dict(state_dict)}, path)
    elif path.suffix in TORCH_SUFFIXES:
        torch.save(dict(state_dict), path)
    else:
        raise InvalidInputError(
            f"Cannot save weights as {path}: use a .safetensors, {', '.join(TORCH_SUFFIXES)} file name"
        )


def _env_is_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _url_file_name(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe_name or "weights"


def _content_length(response) -> int | None:
    content_length = response.headers.get("Content-Length")
    return int(content_length) if content_length and content_length.isdigit() else None


def _download_failure_reason(err: BaseException) -> str:
    from imaginairy.utils.downloads import download_failure_reason

    return download_failure_reason(err, DOWNLOAD_STALL_SECONDS)


def _url_unavailable_message(url: str, cached: Path, reason: str, local_copy_hint: str | None) -> str:
    hint = local_copy_hint or f"pass its file path instead of the URL (--model /path/to/{_url_file_name(url)})"
    return (
        f"Weights file '{_url_file_name(url)}' from {url} is not in the cache and could not be downloaded: {reason};"
        f" to use a local copy, {hint}, or save it as {cached}"
    )


def _hub_download_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    return (EntryNotFoundError, HfHubHTTPError, OSError, httpx.HTTPError)


def _hub_failure_reason(offline: bool, err: BaseException) -> str:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if offline:
        return "offline mode (HF_HUB_OFFLINE) is on"
    if isinstance(err, RepositoryNotFoundError):
        return "the repo does not exist or needs a login (`hf auth login`)"
    if isinstance(err, RevisionNotFoundError):
        return "the repo has no such revision"
    if isinstance(err, EntryNotFoundError):
        return "the repo has no such file, or it could not be reached"
    return _first_sentence(err)


def _hub_file_unavailable_message(
    hub_file: HubFile, cache_dir: Path, offline: bool, err: BaseException, local_copy_hint: str | None = None
) -> str:
    revision_text = f" at revision '{hub_file.revision}'" if hub_file.revision else ""
    revision_option = f" --revision {hub_file.revision}" if hub_file.revision else ""
    return (
        f"Weights file '{hub_file.filename}' from Hugging Face repo '{hub_file.repo_id}'{revision_text}"
        f" is not in the cache ({cache_dir}) and could not be downloaded: {_hub_failure_reason(offline, err)};"
        f" to use a local copy, {local_copy_hint or f'pass --model /path/to/{Path(hub_file.filename).name}'},"
        f" or put it in the cache with `hf download {hub_file.repo_id} {hub_file.filename}{revision_option}`"
    )


def _hub_snapshot_unavailable_message(
    repo_id: str,
    allow_patterns: list[str] | None,
    revision: str | None,
    cache_dir: Path,
    offline: bool,
    err: BaseException,
) -> str:
    files_text = f"Files {', '.join(allow_patterns)}" if allow_patterns else "Files"
    revision_text = f" at revision '{revision}'" if revision else ""
    include_options = "".join(f" --include '{pattern}'" for pattern in allow_patterns or [])
    revision_option = f" --revision {revision}" if revision else ""
    return (
        f"{files_text} of Hugging Face repo '{repo_id}'{revision_text} are not in the cache ({cache_dir})"
        f" and could not be downloaded: {_hub_failure_reason(offline, err)};"
        f" put them in the cache with `hf download {repo_id}{include_options}{revision_option}`"
    )


def _silent_tqdm_class():
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _is_safetensors_file(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    if path.suffix in TORCH_SUFFIXES:
        return False
    with path.open("rb") as file:
        start = file.read(SAFETENSORS_LENGTH_BYTES + 1)
    if len(start) <= SAFETENSORS_LENGTH_BYTES:
        return False
    header_bytes = int.from_bytes(start[:SAFETENSORS_LENGTH_BYTES], "little")
    header_fits = 0 < header_bytes <= path.stat().st_size - SAFETENSORS_LENGTH_BYTES
    return header_fits and start[SAFETENSORS_LENGTH_BYTES:] == b"{"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, each a view of its own private memory map of the file: nothing is read until a tensor is
    used, the tensors can become a model's parameters (`load_state_dict(assign=True)`) with no second copy, and a
    tensor converted to another dtype and dropped gives its pages back."""
    import json

    try:
        with path.open("rb") as file:
            header_bytes = int.from_bytes(file.read(SAFETENSORS_LENGTH_BYTES), "little")
            header_limit = min(path.stat().st_size - SAFETENSORS_LENGTH_BYTES, MAX_SAFETENSORS_HEADER_BYTES)
            if not 0 < header_bytes <= header_limit:
                raise ValueError(
                    f"its header length field says {header_bytes} bytes; the file has room for {header_limit}"
                )
            header = json.loads(file.read(header_bytes))
            if not isinstance(header, dict):
                raise ValueError("its header is not a JSON object")
            header.pop("__metadata__", None)
            data_start = SAFETENSORS_LENGTH_BYTES + header_bytes
            file_size = path.stat().st_size
            return {name: _safetensors_view(file, file_size, data_start, entry) for name, entry in header.items()}
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        reason = f"not a valid safetensors file ({_first_sentence(err)})"
        raise ModelLoadError(f"Cannot load weights file {path}: {reason}") from err


SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def _safetensors_view(file, file_size: int, data_start: int, entry: dict) -> torch.Tensor:
    """One tensor of a safetensors file, mapped from the file (copied only when its bytes are misaligned)."""
    import mmap

    import torch

    dtype = getattr(torch, SAFETENSORS_DTYPES[entry["dtype"]])
    start, end = (data_start + offset for offset in entry["data_offsets"])
    shape = [int(size) for size in entry["shape"]]
    item_bytes = torch.empty((), dtype=dtype).element_size()
    if not data_start <= start <= end <= file_size or end - start != item_bytes * math.prod(shape):
        raise ValueError(f"tensor byte range {entry['data_offsets']} does not fit its shape or the file")
    if start == end:
        return torch.empty(shape, dtype=dtype)
    page_start = start - start % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(file.fileno(), end - page_start, offset=page_start, access=mmap.ACCESS_COPY)
    raw = torch.frombuffer(mapped, dtype=torch.uint8)[start - page_start :]
    if start % item_bytes:
        raw = raw.clone()
    return raw.view(dtype).view(shape)


def _load_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    # a damaged pickle can fail with almost any exception type; all of them mean the file cannot be read
    except Exception as err:
        raise ModelLoadError(f"Cannot load weights file {path}: {_torch_load_failure_reason(err)}") from err
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"Cannot load weights file {path}: it holds a {type(loaded).__name__}, not a state dict")
    return loaded


def _torch_load_failure_reason(err: BaseException) -> str:
    unsupported_global = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if unsupported_global:
        return (
            f"it needs code to load ({unsupported_global[1]}), and checkpoints are only loaded as data"
            " (torch.load weights_only=True); convert it to .safetensors where it came from"
        )
    return f"corrupt, truncated or not a checkpoint ({type(err).__name__}: {_first_sentence(err)})"


def _first_sentence(err: BaseException) -> str:
    return first_line(err).split(". ")[0]


def _unshared_contiguous_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights, views): give each its own copy."""
    seen_storages = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(storage)
        tensors[name] = tensor.contiguous()
    return tensors


@dataclass(frozen=True)
class HelperWeights:
    """The weights file of a helper model (face detector, restorer, upscaler): its default location, and the
    environment variable that points at another one (a local file, a URL or an hf:// file)."""

    description: str
    default_location: str
    env_var: str

    def location(self) -> str:
        return os.environ.get(self.env_var) or self.default_location

    def resolve(self, *, progress: bool = True) -> Path:
        """The local path of the weights (downloaded into the cache if needed); errors name `env_var`."""
        location = self.location()
        hint = f"set {self.env_var}=/path/to/{_url_file_name(self.default_location)}"
        try:
            return resolve_weights(location, progress=progress, local_copy_hint=hint)
        except ModelNotFoundError as error:
            raise ModelNotFoundError(f"{self.description} weights from {self.env_var}: {error}") from error


TRANSFORMERS_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_folder(
    repo_id: str,
    *,
    local_copy: str | os.PathLike | None,
    config_patterns: tuple[str, ...],
    required_files: tuple[str, ...],
    description: str,
    env_var: str,
) -> Path:
    """The folder of a transformers-style hub repo (config files and one weights file).

    `local_copy` (a folder) when given, checked to hold `required_files` and a weights file; otherwise the hub cache,
    downloading `config_patterns` and `model.safetensors` (or `pytorch_model.bin` where the repo has no safetensors)
    if needed. Raises WeightsUnavailableError naming the repo and `env_var`, the way to point at a local copy.
    """
    if local_copy:
        folder = Path(local_copy).expanduser()
        missing = [name for name in required_files if not (folder / name).is_file()]
        if not any((folder / name).is_file() for name in TRANSFORMERS_WEIGHTS_FILES):
            missing.append(" or ".join(TRANSFORMERS_WEIGHTS_FILES))
        if missing:
            raise WeightsUnavailableError(
                f"{description} folder {folder} lacks {', '.join(missing)}; point {env_var} (or model_location) at"
                f" a folder holding a copy of the {repo_id} hub repo"
            )
        return folder
    try:
        folder = resolve_hub_snapshot(repo_id, [*config_patterns, TRANSFORMERS_WEIGHTS_FILES[0]])
        if not any((folder / name).is_file() for name in TRANSFORMERS_WEIGHTS_FILES):
            folder = resolve_hub_file(HubFile(repo_id, TRANSFORMERS_WEIGHTS_FILES[1])).parent
    except WeightsUnavailableError as error:
        raise WeightsUnavailableError(
            f"{description} unavailable: {error}; or set {env_var}=/path/to/a/local/copy/of/the/repo"
        ) from error
    return folder


def transformers_weights_file(folder: Path) -> Path:
    """The weights file of a folder `resolve_model_folder` returned."""
    return next(folder / name for name in TRANSFORMERS_WEIGHTS_FILES if (folder / name).is_file())
