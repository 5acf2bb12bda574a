"""The gallery: the images of the server's output folder, newest first, and the files themselves.

Only regular files inside the output folder are served: a path is resolved (symlinks and `..` followed) and must
still lie inside the folder, or the answer is 404, the same as for a file that does not exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from imaginairy.server.http.service import HttpService

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
MAX_PER_PAGE = 100


def gallery_files(outdir: Path) -> list[Path]:
    """The images under `outdir` (resolved), newest first; links to files elsewhere are left out."""
    found = []
    for folder, _dirs, files in os.walk(outdir):
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.resolve().is_relative_to(outdir):
                found.append((path.stat().st_mtime, str(path), path))
    return [path for _mtime, _name, path in sorted(found, reverse=True)]


def inside(outdir: Path, relative: str) -> Path:
    """The file `relative` names inside `outdir`; 404 for anything else (missing, outside, not a file)."""
    try:
        path = (outdir / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        path = None
    if path is None or not path.is_relative_to(outdir) or not path.is_file() or path.suffix.lower() not in \
            IMAGE_SUFFIXES:
        raise HTTPException(404, "No such image in the gallery.")
    return path


def settings_of(path: Path) -> tuple[str | None, dict | None]:
    """The A1111 `parameters` text and our settings JSON embedded in an image file, if any."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            texts = {key: value for key, value in img.info.items() if isinstance(value, str)}
    except OSError:
        return None, None
    try:
        ours = json.loads(texts["imaginairy"]) if "imaginairy" in texts else None
    except json.JSONDecodeError:
        ours = None
    return texts.get("parameters"), ours


def router(service: HttpService) -> APIRouter:
    api = APIRouter(prefix="/v1/gallery", tags=["gallery"])

    def outdir() -> Path:
        if service.outdir is None:
            raise HTTPException(404, "This server has no output folder (start it with --outdir).")
        return service.outdir

    @api.get("")
    def list_images(page: int = Query(0, ge=0), per_page: int = Query(24, ge=1, le=MAX_PER_PAGE)):
        folder = outdir()
        files = gallery_files(folder) if folder.is_dir() else []
        items = []
        for path in files[page * per_page:(page + 1) * per_page]:
            relative = path.relative_to(folder).as_posix()
            parameters, settings = settings_of(path)
            items.append({"name": relative, "url": f"/v1/gallery/files/{relative}", "modified": path.stat().st_mtime,
                          "parameters": parameters, "settings": settings})
        return {"items": items, "total": len(files), "page": page, "per_page": per_page}

    @api.get("/files/{relative:path}", response_class=FileResponse)
    def gallery_file(relative: str):
        return FileResponse(inside(outdir(), relative))

    return api
