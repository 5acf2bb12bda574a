"""Weights locations (local / URL / hub) and state dict loading. No network: only 127.0.0.1 servers started here."""

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from imaginairy.errors import InvalidInputError, ModelLoadError, ModelNotFoundError, WeightsUnavailableError
from imaginairy.models.weights import (
    HubFile,
    load_state_dict,
    parse_hub_location,
    resolve_hub_snapshot,
    resolve_weights,
    save_state_dict,
    url_cache_path,
    weights_cache_dir,
)

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class NotATensor:
    """A class a checkpoint must never be allowed to instantiate."""


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Caches in tmp_path, hub offline, and any connection to a host other than 127.0.0.1 refused."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("IMAGINAIRY_CACHE_DIR", str(tmp_path / "imaginairy-cache"))
    for proxy_variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy_variable, raising=False)
    connect = socket.socket.connect

    def connect_to_loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            raise AssertionError(f"test tried to reach the network: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect_to_loopback_only)


def small_state_dict():
    generator = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(4, generator=generator),
        "first_stage_model.encoder.conv_in.weight": torch.randn(2, 2, dtype=torch.float16, generator=generator),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(7).unsqueeze(0),
    }


def assert_same_tensors(actual, expected):
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def assert_one_line(err):
    assert "\n" not in str(err)


# local files and state dicts


def test_local_path_is_returned_as_is(tmp_path):
    weights_file = tmp_path / "model.safetensors"
    save_state_dict(small_state_dict(), weights_file)

    assert resolve_weights(str(weights_file)) == weights_file
    assert resolve_weights(weights_file) == weights_file


def test_missing_local_path_is_model_not_found(tmp_path):
    missing = tmp_path / "nope.ckpt"

    with pytest.raises(ModelNotFoundError, match="nope.ckpt") as raised:
        resolve_weights(str(missing))
    assert_one_line(raised.value)


def test_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(ModelNotFoundError):
        resolve_weights(str(tmp_path))


@pytest.mark.parametrize("file_name", ["model.safetensors", "model.ckpt", "model.pt", "model.pth", "model.bin"])
def test_state_dict_round_trip(tmp_path, file_name):
    state_dict = small_state_dict()
    save_state_dict(state_dict, tmp_path / file_name)

    assert_same_tensors(load_state_dict(tmp_path / file_name), state_dict)


def test_safetensors_round_trip_with_tensors_sharing_memory(tmp_path):
    embedding = torch.randn(5, 3)
    state_dict = {"embed.weight": embedding, "lm_head.weight": embedding, "first_row": embedding[0]}
    save_state_dict(state_dict, tmp_path / "tied.safetensors")

    assert_same_tensors(load_state_dict(tmp_path / "tied.safetensors"), state_dict)


def test_ckpt_is_saved_in_a_state_dict_wrapper(tmp_path):
    save_state_dict(small_state_dict(), tmp_path / "model.ckpt")

    raw = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert set(raw) == {"state_dict"}


def test_compvis_checkpoint_is_unwrapped(tmp_path):
    state_dict = small_state_dict()
    torch.save({"state_dict": state_dict, "global_step": 470000, "epoch": 6}, tmp_path / "compvis.ckpt")

    assert_same_tensors(load_state_dict(tmp_path / "compvis.ckpt"), state_dict)


def test_other_wrappers_are_left_to_the_caller(tmp_path):
    state_dict = small_state_dict()
    torch.save({"params_ema": state_dict}, tmp_path / "realesrgan.pth")

    loaded = load_state_dict(tmp_path / "realesrgan.pth")
    assert_same_tensors(loaded["params_ema"], state_dict)


@pytest.mark.parametrize("saved_as", ["model.safetensors", "model.ckpt"])
def test_unknown_suffix_is_sniffed(tmp_path, saved_as):
    state_dict = small_state_dict()
    save_state_dict(state_dict, tmp_path / saved_as)
    renamed = (tmp_path / saved_as).rename(tmp_path / "model.weights")

    assert_same_tensors(load_state_dict(renamed), state_dict)


def test_pickle_that_needs_code_is_refused(tmp_path):
    torch.save({"state_dict": small_state_dict(), "payload": NotATensor()}, tmp_path / "evil.ckpt")

    with pytest.raises(ModelLoadError, match="evil.ckpt") as raised:
        load_state_dict(tmp_path / "evil.ckpt")
    assert "NotATensor" in str(raised.value)
    assert_one_line(raised.value)


@pytest.mark.parametrize("file_name", ["model.safetensors", "model.ckpt", "model.bin"])
def test_truncated_file_is_a_load_error(tmp_path, file_name):
    whole = tmp_path / f"whole-{file_name}"
    save_state_dict(small_state_dict(), whole)
    truncated = tmp_path / file_name
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(ModelLoadError, match=file_name) as raised:
        load_state_dict(truncated)
    assert_one_line(raised.value)


def test_garbage_file_is_a_load_error(tmp_path):
    garbage = tmp_path / "model.ckpt"
    garbage.write_bytes(b"not a checkpoint at all " * 20)

    with pytest.raises(ModelLoadError) as raised:
        load_state_dict(garbage)
    assert_one_line(raised.value)


def test_saving_with_an_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(InvalidInputError):
        save_state_dict(small_state_dict(), tmp_path / "model.npz")


# plain URLs, from a server on 127.0.0.1

WEIGHTS_BYTES = bytes(range(256)) * 4096  # 1 MiB, more than one download chunk
requests_seen: list[str | None] = []  # the Range headers of the requests for dropped.safetensors


class WeightsRequestHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/files/model.safetensors":
            self.send_response(200)
            self.send_header("Content-Length", str(len(WEIGHTS_BYTES)))
            self.end_headers()
            self.wfile.write(WEIGHTS_BYTES)
        elif self.path == "/files/dropped.safetensors":
            # the first third, then the connection drops; a Range request is answered from where it asks
            start = int(self.headers.get("Range", "bytes=0-")[len("bytes="):].rstrip("-"))
            requests_seen.append(self.headers.get("Range"))
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(WEIGHTS_BYTES) - start))
            self.end_headers()
            self.wfile.write(WEIGHTS_BYTES[start:] if start else WEIGHTS_BYTES[: len(WEIGHTS_BYTES) // 3])
            self.close_connection = True
        elif self.path == "/files/stalled.safetensors":
            self.send_response(200)
            self.send_header("Content-Length", str(len(WEIGHTS_BYTES)))
            self.end_headers()
            self.wfile.write(WEIGHTS_BYTES[:1000])
            self.wfile.flush()
            time.sleep(1.5)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def weights_server():
    """A local weights server; yields (base url, stop function)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WeightsRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()

    yield f"http://127.0.0.1:{server.server_address[1]}", stop
    if thread.is_alive():
        stop()


def test_url_is_downloaded_then_read_from_the_cache(monkeypatch, weights_server):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    base_url, stop_server = weights_server
    url = f"{base_url}/files/model.safetensors"

    downloaded = resolve_weights(url, progress=False)
    assert downloaded == url_cache_path(url)
    assert downloaded.parent == weights_cache_dir()
    assert downloaded.name.endswith("-model.safetensors")
    assert downloaded.read_bytes() == WEIGHTS_BYTES

    stop_server()
    assert resolve_weights(url, progress=False) == downloaded
    assert [path.name for path in weights_cache_dir().iterdir()] == [downloaded.name]


def test_url_not_found_is_unavailable(monkeypatch, weights_server):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    base_url, _ = weights_server
    url = f"{base_url}/files/missing.ckpt"

    with pytest.raises(WeightsUnavailableError, match="404") as raised:
        resolve_weights(url, progress=False)
    assert url in str(raised.value)
    assert_one_line(raised.value)
    assert list(weights_cache_dir().iterdir()) == []


def test_connection_dropped_mid_download_is_resumed_on_the_next_try(monkeypatch, weights_server):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    base_url, _ = weights_server
    url = f"{base_url}/files/dropped.safetensors"
    requests_seen.clear()

    with pytest.raises(WeightsUnavailableError, match="dropped.safetensors.*run again to resume") as raised:
        resolve_weights(url, progress=False)
    assert_one_line(raised.value)
    assert not url_cache_path(url).exists()
    partial = url_cache_path(url).with_name(url_cache_path(url).name + ".partial")
    assert partial.read_bytes() == WEIGHTS_BYTES[: len(WEIGHTS_BYTES) // 3]

    assert resolve_weights(url, progress=False).read_bytes() == WEIGHTS_BYTES
    assert requests_seen == [None, f"bytes={len(WEIGHTS_BYTES) // 3}-"]
    assert [path.name for path in weights_cache_dir().iterdir()] == [url_cache_path(url).name]


def test_stalled_download_fails_after_the_stall_timeout(monkeypatch, weights_server):
    from imaginairy.models import weights

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights, "DOWNLOAD_STALL_SECONDS", 0.5)
    base_url, _ = weights_server
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="no data for 0.5 seconds") as raised:
        weights.resolve_url(f"{base_url}/files/stalled.safetensors", progress=False)
    assert time.monotonic() - start < 1.4
    assert_one_line(raised.value)


def test_unreachable_server_is_unavailable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]

    with pytest.raises(WeightsUnavailableError):
        resolve_weights(f"http://127.0.0.1:{closed_port}/model.ckpt", progress=False)


def test_url_offline_and_not_cached_is_unavailable(weights_server):
    base_url, _ = weights_server
    url = f"{base_url}/files/model.safetensors"

    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as raised:
        resolve_weights(url)
    assert str(url_cache_path(url)) in str(raised.value)
    assert not url_cache_path(url).exists()


# Hugging Face hub


def put_in_hub_cache(hf_home: Path, repo_id: str, filename: str, content: bytes, ref: str = "main") -> Path:
    """Lay a file out the way huggingface_hub caches it: a blob, a snapshot symlink to it, and a ref."""
    repo_folder = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    blob = repo_folder / "blobs" / "3f786850e387550fdab836ed7e6dc881de23001b"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    snapshot_file = repo_folder / "snapshots" / HUB_COMMIT / filename
    snapshot_file.parent.mkdir(parents=True, exist_ok=True)
    snapshot_file.symlink_to(Path("..", *[".."] * filename.count("/"), "..", "blobs", blob.name))
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / ref).write_text(HUB_COMMIT)  # no newline, as huggingface_hub writes it
    return snapshot_file


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("hf://org/model/v1.safetensors", HubFile("org/model", "v1.safetensors")),
        ("hf://org/model/unet/diffusion.bin", HubFile("org/model", "unet/diffusion.bin")),
        ("hf://org/model@fp16/v1.safetensors", HubFile("org/model", "v1.safetensors", "fp16")),
        ("hf://org/model/v1.safetensors@" + HUB_COMMIT, HubFile("org/model", "v1.safetensors", HUB_COMMIT)),
    ],
)
def test_hub_locations_are_parsed(location, expected):
    assert parse_hub_location(location) == expected


@pytest.mark.parametrize(
    "location", ["hf://model.ckpt", "hf://org/model", "hf://org/model@a/file@b", "hf://org/mo..del/f", "hf://o/m/../f"]
)
def test_bad_hub_locations_are_refused(location):
    with pytest.raises(InvalidInputError):
        resolve_weights(location)


def test_hub_file_offline_and_not_cached_is_unavailable():
    with pytest.raises(WeightsUnavailableError) as raised:
        resolve_weights("hf://sd-org/sd-model/v1-5-pruned-emaonly.safetensors", progress=False)

    message = str(raised.value)
    assert "sd-org/sd-model" in message
    assert "v1-5-pruned-emaonly.safetensors" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local copy" in message
    assert "hf download sd-org/sd-model v1-5-pruned-emaonly.safetensors" in message
    assert_one_line(raised.value)


def test_hub_file_offline_and_cached_is_found(tmp_path):
    cached = put_in_hub_cache(tmp_path / "hf-home", "sd-org/sd-model", "unet/model.safetensors", b"weights")

    resolved = resolve_weights("hf://sd-org/sd-model/unet/model.safetensors")
    assert resolved == cached
    assert resolved.read_bytes() == b"weights"


def test_hub_file_cached_at_a_commit_is_found_by_revision(tmp_path):
    cached = put_in_hub_cache(tmp_path / "hf-home", "sd-org/sd-model", "model.ckpt", b"weights", ref="v2")

    assert resolve_weights(f"hf://sd-org/sd-model@{HUB_COMMIT}/model.ckpt") == cached
    assert resolve_weights("hf://sd-org/sd-model@v2/model.ckpt") == cached
    with pytest.raises(WeightsUnavailableError, match="revision 'other'"):
        resolve_weights("hf://sd-org/sd-model@other/model.ckpt")


def test_cached_hub_file_is_used_without_offline_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    cached = put_in_hub_cache(tmp_path / "hf-home", "sd-org/sd-model", "model.safetensors", b"weights")

    assert resolve_weights("hf://sd-org/sd-model/model.safetensors") == cached


def test_hub_snapshot_offline_and_cached_is_found(tmp_path):
    cached = put_in_hub_cache(tmp_path / "hf-home", "blip-org/blip", "config.json", b"{}")

    assert resolve_hub_snapshot("blip-org/blip", ["*.json"]) == cached.parent


def test_hub_snapshot_offline_and_not_cached_is_unavailable():
    with pytest.raises(WeightsUnavailableError) as raised:
        resolve_hub_snapshot("blip-org/blip", ["*.json", "*.safetensors"], progress=False)

    message = str(raised.value)
    assert "blip-org/blip" in message
    assert "hf download blip-org/blip --include '*.json' --include '*.safetensors'" in message
    assert_one_line(raised.value)
