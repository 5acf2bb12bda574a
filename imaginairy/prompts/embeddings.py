"""Textual-inversion embeddings: files -> named token vectors, triggered by their name in the prompt.

Layouts read (as A1111's `modules/textual_inversion/textual_inversion.py` and diffusers' `load_textual_inversion`
read them):

- A1111 `.pt`: `{"string_to_param": {"*": tensor [vectors, dim]}, "name": ..., ...}`;
- A1111 `.safetensors`: `{"emb_params": tensor [vectors, dim]}`;
- diffusers `learned_embeds.bin` / `.safetensors`: `{token: tensor [dim] or [vectors, dim]}`.

The trigger is the file's name without its extension (`easynegative.safetensors` -> `easynegative`), as in A1111;
it matches the name's CLIP tokens, so case does not matter. `.pt`/`.bin` files are read with
`torch.load(weights_only=True)`: a file that would run code when unpickled is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from imaginairy.errors import EmbeddingError, first_line
from imaginairy.modules.tokenizer import text_token_ids
from imaginairy.prompts.chunks import check_embedding_fits

logger = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
SDXL_KEYS = ("clip_l", "clip_g")


@dataclasses.dataclass(frozen=True)
class Embedding:
    """A textual-inversion embedding: its trigger name, its vectors [vectors, dim] (float32) and its file."""

    name: str
    vectors: torch.Tensor
    path: Path


def find_embeddings(texts: Iterable[str], search_paths: Sequence[str | os.PathLike]) -> list[Embedding]:
    """The embeddings whose trigger names occur in `texts`, loaded from `search_paths` (embedding files, or folders
    searched with their subfolders for .pt/.bin/.safetensors files). Files not triggered are not read; a name
    found twice is taken from the first path (a warning names both)."""
    candidates = embedding_files(search_paths)
    if not candidates:
        return []
    text_tokens = [text_token_ids(text) for text in texts]
    found = []
    for name, path in candidates.items():
        name_tokens = text_token_ids(name)
        if name_tokens and any(_contains(tokens, name_tokens) for tokens in text_tokens):
            found.append(load_embedding(path, name))
    return found


def embedding_files(search_paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Trigger name -> file, over the given files and folders (folders walked in name order)."""
    files: dict[str, Path] = {}
    for search_path in search_paths:
        path = Path(search_path)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in EMBEDDING_SUFFIXES and p.is_file())
        elif path.is_file():
            found = [path]
        else:
            raise EmbeddingError(f"Embedding path not found: {path} (give an embedding file or a folder of them).")
        for file in found:
            name = file.stem
            if name in files:
                logger.warning("Embedding %r is both %s and %s; using the first.", name, files[name], file)
            else:
                files[name] = file
    return files


def load_embedding(path: str | os.PathLike, name: str | None = None) -> Embedding:
    """The embedding in one file (A1111 .pt / .safetensors or diffusers layout), named `name` or the file's stem."""
    path = Path(path)
    name = name or path.stem
    state = _read_embedding_file(path)
    vectors = _embedding_vectors(state, path)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise EmbeddingError(
            f"Embedding {path} holds a tensor of shape {tuple(vectors.shape)}, not [vectors, dim]."
        )
    if not vectors.is_floating_point() or not torch.isfinite(vectors).all():
        raise EmbeddingError(f"Embedding {path} holds non-finite or non-float values.")
    check_embedding_fits(name, vectors.shape[0])
    return Embedding(name=name, vectors=vectors.detach().to(torch.float32), path=path)


def _read_embedding_file(path: Path) -> dict:
    if not path.is_file():
        raise EmbeddingError(f"Embedding file not found: {path}")
    if path.stat().st_size == 0:
        raise EmbeddingError(f"Embedding file is empty: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise EmbeddingError(f"Cannot read embedding {path} (corrupt safetensors file?): {first_line(e)}") from e
    try:
        # Old A1111 files hold string_to_param as a torch ParameterDict; that class is allowed, nothing else.
        with torch.serialization.safe_globals([torch.nn.ParameterDict]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        if "allowed global" in reason:
            raise EmbeddingError(
                f"Refused embedding {path}: it holds Python objects besides tensors, which could run code when loaded "
                f"({reason}). Use a .safetensors embedding or one saved as plain tensors."
            ) from e
        raise EmbeddingError(
            f"Cannot read embedding {path}: not a torch tensor file ({reason}; weights-only loading stopped there, "
            "nothing in it was run)."
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise EmbeddingError(f"Cannot read embedding {path} (corrupt or not a torch file?): {first_line(e)}") from e
    if not isinstance(state, dict):
        raise EmbeddingError(f"Embedding {path} holds a {type(state).__name__}, not an embedding dictionary.")
    return state


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only error that says what it refused ("GLOBAL io.open was not an allowed global
    ...", "Unsupported operand 110"), without its advice to load the file unsafely."""
    lines = [line.strip() for line in str(error).splitlines()]
    return next((line for line in lines if "allowed global" in line or line.startswith("Unsupported")),
                first_line(error)).split(". Please use")[0]


def _embedding_vectors(state: dict, path: Path) -> torch.Tensor:
    if "string_to_param" in state:
        params = state["string_to_param"]
        params = dict(params.items()) if hasattr(params, "items") else {}
        if len(params) != 1:
            raise EmbeddingError(f"Embedding {path} has {len(params)} terms in string_to_param; expected one.")
        return _tensor(next(iter(params.values())), path)
    if all(key in state for key in SDXL_KEYS):
        raise EmbeddingError(
            f"Embedding {path} is an SDXL embedding (clip_l and clip_g vectors); this model's text encoder takes "
            "SD 1.x/2.x embeddings."
        )
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if len(state) == 1 and len(tensors) == 1:  # A1111 .safetensors ("emb_params") or diffusers ({token: tensor})
        return next(iter(tensors.values()))
    raise EmbeddingError(
        f"Embedding {path} is not a textual-inversion embedding: expected string_to_param (A1111 .pt), emb_params "
        f"(A1111 .safetensors) or one {{token: tensor}} (diffusers); it has keys {sorted(map(str, state))[:5]}."
    )


def _tensor(value, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingError(f"Embedding {path} holds a {type(value).__name__} where a tensor belongs.")
    return value


def _contains(tokens: list[int], part: list[int]) -> bool:
    return any(tokens[start : start + len(part)] == part for start in range(len(tokens) - len(part) + 1))
