"""The models folder users keep, as the AUTOMATIC1111 web UI lays it out: one folder with `checkpoints/`, `loras/`,
`embeddings/` and `vae/` (any depth below each), chosen with `--models-dir` or `IMAGINAIRY_MODELS_DIR` (read by
imaginairy.settings).

A file is named by its stem (`dreamshaper_8` for `checkpoints/dreamshaper_8.safetensors`) or its path below the kind's
folder without the suffix (`styles/film_grain`); names compare case-insensitively. `find(kind, name)` resolves one,
`list_files(kind)` lists them, `describe(kind, path)` says what a file is (architecture from its keys, size, hash).

Hashes are AUTOMATIC1111's (modules/hashes.py, extensions-builtin/Lora/network.py): the full-file sha256, shortened to
10 hex digits for a checkpoint's or VAE's "Model hash" / "VAE hash"; for a LoRA the sha256 of a .safetensors file's
tensor data after its header (kohya's "addnet" hash; the whole file for other formats), shortened to 12 ("Lora
hashes"). Each file is hashed once, in one read; the hashes are kept in `hashes.json` in the imaginairy cache folder,
keyed by the file's path, size and modification time, so a later run reads none of the file again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imaginairy.errors import ModelNotFoundError
from imaginairy.settings import MODELS_DIR_ENV

KINDS = ("checkpoints", "loras", "embeddings", "vae")
KIND_SUFFIXES = {
    "checkpoints": (".safetensors", ".ckpt"),
    "loras": (".safetensors", ".pt", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "vae": (".safetensors", ".pt", ".ckpt"),
}
MODEL_HASH_DIGITS = 10
LORA_HASH_DIGITS = 12
HASH_CHUNK_BYTES = 1024 * 1024
HASH_CACHE_FILE = "hashes.json"
CLOSE_MATCHES = 5


def models_dir(location: str | os.PathLike | None) -> Path | None:
    """The models folder at `location` (--models-dir, else Settings.models_dir), or None when none is set."""
    return Path(location).expanduser() if location else None


def list_files(kind: str, root: Path | None) -> list[Path]:
    """The files of one kind in the models folder, sorted by their names."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = root / kind if root is not None else None
    if folder is None or not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in KIND_SUFFIXES[kind]]
    return sorted(files, key=lambda p: file_name(kind, root, p).lower())


def file_name(kind: str, root: Path, path: Path) -> str:
    """A file's name in the folder: its path below `root/kind` without the suffix, with "/" separators."""
    return path.relative_to(root / kind).with_suffix("").as_posix()


def find(kind: str, name: str, root: Path | None) -> Path:
    """The file of `kind` called `name` (stem or sub-path, any case; a suffix may be given). Raises
    ModelNotFoundError listing the closest names in the folder."""
    files = list_files(kind, root)
    given = Path(name)
    wanted = (given.with_suffix("") if given.suffix.lower() in KIND_SUFFIXES[kind] else given).as_posix().lower()
    names = {path: file_name(kind, root, path) for path in files}
    for path, full_name in names.items():
        if wanted in (full_name.lower(), path.stem.lower()):
            return path
    singular = kind.removesuffix("s")
    if root is None:
        raise ModelNotFoundError(
            f"{singular} {name!r} is not a file; to use names, point --models-dir or {MODELS_DIR_ENV} at a folder"
            f" with {kind}/ in it"
        )
    candidates = sorted({*names.values(), *(p.stem for p in names)})
    close = difflib.get_close_matches(name, candidates, n=CLOSE_MATCHES, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {len(files)} {kind}"
    raise ModelNotFoundError(f"no {singular} named {name!r} in {root / kind}{hint}")


def resolve(kind: str, path_or_name: str, root: Path | None) -> Path:
    """An existing file path, else a name in the models folder's `kind` folder (ModelNotFoundError if neither)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path.resolve()
    try:
        return find(kind, path_or_name, root).resolve()
    except ModelNotFoundError as error:
        if path.suffix.lower() in KIND_SUFFIXES[kind] or path.is_absolute() or path_or_name.startswith(("~", ".")):
            raise ModelNotFoundError(f"{kind.removesuffix('s')} file not found: {path_or_name} ({error})") from error
        raise


@dataclass(frozen=True)
class FileHashes:
    sha256: str  # of the whole file
    tensor_data_sha256: str  # of a safetensors file's bytes after the header (kohya's "addnet" hash); else sha256

    @property
    def model_hash(self) -> str:
        """A1111's "Model hash" / "VAE hash" (AutoV2)."""
        return self.sha256[:MODEL_HASH_DIGITS]

    @property
    def lora_hash(self) -> str:
        """A1111's "Lora hashes" entry (AutoV3 for .safetensors)."""
        return self.tensor_data_sha256[:LORA_HASH_DIGITS]

    @property
    def embedding_hash(self) -> str:
        """A1111's "TI hashes" entry: the whole file's sha256, as many digits as a LoRA's (its `shorthash`)."""
        return self.sha256[:LORA_HASH_DIGITS]


def hash_cache_path() -> Path:
    from imaginairy.models.weights import weights_cache_dir

    return weights_cache_dir().parent / HASH_CACHE_FILE


def file_hashes(path: str | os.PathLike) -> FileHashes:
    """The file's hashes: from the cache when its size and modification time are unchanged, else read once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = hash_cache_path()
    cache = _read_cache(cache_path)
    if key in cache:
        return FileHashes(**cache[key])
    hashes = _hash_file(path)
    cache = {k: v for k, v in _read_cache(cache_path).items() if not k.startswith(f"{path}|")}
    cache[key] = {"sha256": hashes.sha256, "tensor_data_sha256": hashes.tensor_data_sha256}
    _write_cache(cache_path, cache)
    return hashes


def _hash_file(path: Path) -> FileHashes:
    whole = hashlib.sha256()
    with path.open("rb") as file:
        data = None
        if path.suffix.lower() == ".safetensors":
            start = file.read(8)
            header = file.read(int.from_bytes(start, "little")) if len(start) == 8 else b""
            whole.update(start + header)
            data = hashlib.sha256()
        while chunk := file.read(HASH_CHUNK_BYTES):
            whole.update(chunk)
            if data is not None:
                data.update(chunk)
    return FileHashes(whole.hexdigest(), (data or whole).hexdigest())


def _read_cache(cache_path: Path) -> dict:
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache_path: Path, cache: dict) -> None:
    """Through a temporary file renamed over the cache, so a reader never sees half of it; a cache that cannot be
    written only costs a re-hash next time."""
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = tempfile.NamedTemporaryFile("w", dir=cache_path.parent, delete=False, suffix=".partial")
    except OSError:
        return
    try:
        with partial:
            json.dump(cache, partial, indent=1, sort_keys=True)
        os.replace(partial.name, cache_path)
    except OSError:
        Path(partial.name).unlink(missing_ok=True)


def describe(kind: str, path: Path) -> dict:
    """What a file is: {"architecture", "bytes", "hash"} (the hash A1111 shows for that kind of file)."""
    hashes = file_hashes(path)
    return {
        "architecture": detect_architecture(kind, path),
        "bytes": path.stat().st_size,
        "hash": hashes.lora_hash if kind == "loras" else hashes.model_hash,
    }


def detect_architecture(kind: str, path: Path) -> str:
    """The model family a file belongs to, from its tensor names and shapes; "unreadable: ..." when it cannot be
    read."""
    from imaginairy.errors import ImaginAIryError
    from imaginairy.models.weights import load_state_dict

    try:
        if kind == "loras":
            from imaginairy.models.lora import lora_architecture, read_lora_layers

            return lora_architecture(read_lora_layers(path)) or "LoRA (architecture not evident)"
        state_dict = load_state_dict(path)
    except ImaginAIryError as error:
        return f"unreadable: {error}"
    if kind == "checkpoints":
        from imaginairy.models.loading import checkpoint_architecture

        return checkpoint_architecture(state_dict)
    if kind == "vae":
        from imaginairy.models.vae import vae_layout

        return vae_layout(state_dict)
    return embedding_architecture(state_dict)


EMBEDDING_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}


def embedding_architecture(state_dict: dict) -> str:
    """A textual-inversion embedding's family from its vector width (SDXL files hold clip_l and clip_g)."""
    if "clip_g" in state_dict:
        return "SDXL"
    tensors = [t for t in state_dict.values() if hasattr(t, "shape")]
    if "string_to_param" in state_dict:  # A1111 .pt: {"string_to_param": {"*": tensor}}
        tensors = list(state_dict["string_to_param"].values())
    widths = {t.shape[-1] for t in tensors if len(t.shape)}
    if len(widths) == 1:
        width = widths.pop()
        return EMBEDDING_WIDTHS.get(width, f"embedding of width {width}")
    return "embedding (architecture not evident)"
