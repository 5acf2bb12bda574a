import importlib.util
from pathlib import Path

import pytest

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"


def _tiny_clipseg_script():
    spec = importlib.util.spec_from_file_location("tiny_clipseg", SCRIPTS_DIR / "tiny_clipseg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_clipseg_dir(tmp_path_factory) -> Path:
    """A random-weight CLIPSeg repo folder, built once per test session."""
    return _tiny_clipseg_script().make_tiny_clipseg(tmp_path_factory.mktemp("tiny-clipseg"))
