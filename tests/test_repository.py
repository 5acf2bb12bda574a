"""The checkout itself: no merge left half done."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


def test_no_file_keeps_merge_conflict_markers():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    marked = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".jpg", ".ico"} or not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        marked += [f"{name}:{number}" for number, line in enumerate(lines, 1) if line.startswith(CONFLICT_MARKERS)]
    assert marked == []
