"""A listening HTTP server's safety: credentials on every route, body and image limits, bad input as one clear
4xx, the gallery confined to its folder, no server-side paths in answers, CORS off unless asked for."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import httpx
import pytest
from PIL import Image
from server_helpers import CALL_TIMEOUT, SIZE, TOKEN

from imaginairy.errors import InvalidInputError

AUTH_USER, AUTH_PASSWORD = "alice", "s3cret:with-colon"


@pytest.fixture(scope="module")
def secured(make_server, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("secured-outputs")
    (outdir / "generated").mkdir()
    Image.new("RGB", (8, 8)).save(outdir / "generated" / "kept.png")
    (outdir.parent / "secret.png").write_bytes(b"not for clients")
    os.symlink(outdir.parent / "secret.png", outdir / "generated" / "link.png")
    running = make_server(grpc=False, http_port=0, access_token=TOKEN, api_auth=f"{AUTH_USER}:{AUTH_PASSWORD}",
                          outdir=str(outdir), max_body_bytes=256 * 1024)
    return running


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def every_route(server) -> list[tuple[str, str]]:
    """(method, path) of every route the app has, path parameters filled in."""
    schema = httpx.get(url(server, "/openapi.json"), headers=BEARER).json()
    routes = [(method.upper(), path.replace("{job_id}", "x").replace("{index}", "0").replace("{relative}", "a.png"))
              for path, methods in schema["paths"].items() for method in methods]
    return routes + [("GET", "/"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/web/app.js")]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer"},
    {"Authorization": TOKEN},
    {"Authorization": "Basic " + base64.b64encode(f"{AUTH_USER}:wrong".encode()).decode()},
    {"Authorization": "Basic !!!not-base64"},
], ids=["missing", "wrong", "empty", "no-scheme", "wrong-password", "bad-basic"])
def test_every_route_refuses_missing_or_wrong_credentials(secured, headers):
    for method, path in every_route(secured):
        answer = httpx.request(method, url(secured, path), headers=headers, json={}, timeout=CALL_TIMEOUT)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert answer.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("auth", [
    {"headers": BEARER},
    {"auth": (AUTH_USER, AUTH_PASSWORD)},  # A1111's --api-auth
    {"auth": ("anyone", TOKEN)},  # a browser's login prompt with the token as password
])
def test_accepted_credentials(secured, auth):
    answer = httpx.get(url(secured, "/sdapi/v1/sd-models"), timeout=CALL_TIMEOUT, **auth)
    assert answer.status_code == 200 and answer.json()[0]["title"] == "tiny"


def test_webuiapi_with_basic_auth(secured):
    import webuiapi

    client = webuiapi.WebUIApi(port=secured.http_port, username=AUTH_USER, password=AUTH_PASSWORD, steps=1)
    assert client.get_options()["sd_model_checkpoint"] == "tiny"


@pytest.mark.parametrize(("settings", "message"), [
    ({"access_token": ""}, "empty"),
    ({"access_token": "   "}, "empty"),
    ({"api_auth": "nopassword"}, "user:password"),
    ({"api_auth": ":x"}, "user:password"),
])
def test_refuses_to_start_with_empty_or_malformed_credentials(make_server, settings, message):
    with pytest.raises(InvalidInputError, match=message):
        make_server(grpc=False, http_port=0, **settings)


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares a huge image (its pixels are never sent)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


def test_bad_bodies_are_clear_4xx_and_the_server_keeps_serving(secured):
    def post(path, headers=None, **kw):
        return httpx.post(url(secured, path), headers={**BEARER, **(headers or {})}, timeout=CALL_TIMEOUT, **kw)

    oversize = post("/sdapi/v1/png-info", json={"image": "A" * (300 * 1024)})
    assert oversize.status_code == 413 and "262144 bytes" in oversize.json()["detail"]

    def chunked():  # no Content-Length: the body is counted as it arrives
        yield b'{"image": "'
        for _ in range(40):
            yield b"A" * 8192
        yield b'"}'

    assert post("/sdapi/v1/png-info", content=chunked(), headers={"Content-Type": "application/json"}
                ).status_code == 413
    malformed = post("/sdapi/v1/txt2img", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422 and "JSON" in malformed.json()["detail"]
    not_image = post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"hello, not an image").decode()})
    assert not_image.status_code == 422 and "not a readable image" in not_image.json()["detail"]
    bomb = post("/sdapi/v1/png-info", json={"image": base64.b64encode(bomb_png(60_000, 60_000)).decode()})
    assert bomb.status_code == 422 and "decompression bomb" in bomb.json()["detail"]  # PIL's own bound
    large = post("/sdapi/v1/png-info", json={"image": base64.b64encode(bomb_png(5000, 5000)).decode()})
    assert large.status_code == 422 and "5000x5000" in large.json()["detail"]  # ours, before decoding
    wrong_type = post("/sdapi/v1/txt2img", json={"steps": "many"})
    assert wrong_type.status_code == 422 and "steps" in wrong_type.json()["detail"]

    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(buffer, format="PNG")
    assert post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}
                ).status_code == 200


@pytest.mark.parametrize("path", [
    "../secret.png",
    "..%2fsecret.png",
    "generated/../../secret.png",
    "%2e%2e/secret.png",
    "generated/link.png",  # a symlink out of the folder
    "/etc/passwd",
    "generated/missing.png",
])
def test_gallery_serves_only_images_inside_the_output_folder(secured, path):
    answer = httpx.get(url(secured, f"/v1/gallery/files/{path}"), headers=BEARER, timeout=CALL_TIMEOUT)
    assert answer.status_code == 404 and b"not for clients" not in answer.content


def test_gallery_serves_its_own_images(secured):
    answer = httpx.get(url(secured, "/v1/gallery/files/generated/kept.png"), headers=BEARER, timeout=CALL_TIMEOUT)
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.content)).size == (8, 8)
    listed = httpx.get(url(secured, "/v1/gallery"), headers=BEARER, timeout=CALL_TIMEOUT).json()
    assert [item["name"] for item in listed["items"]] == ["generated/kept.png"]


def test_no_server_side_paths_in_answers(http_api, engines_file):
    folder = str(engines_file.parent)
    models_folder = "tiny-models"
    base = f"http://127.0.0.1:{http_api.http_port}"
    answers = [
        httpx.get(f"{base}/sdapi/v1/sd-models").text,
        httpx.get(f"{base}/sdapi/v1/options").text,
        httpx.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {
            "sd_model_checkpoint": "broken"}, "width": SIZE, "height": SIZE}, timeout=CALL_TIMEOUT).text,
    ]
    assert "broken" in answers[2]  # the failure names the engine ...
    for text in answers:
        assert folder not in text and models_folder not in text and "missing.safetensors" not in text


def test_cors_is_off_unless_an_origin_is_given(http_api, make_server):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    answer = httpx.options(f"http://127.0.0.1:{http_api.http_port}/sdapi/v1/txt2img", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers

    allowed = make_server(grpc=False, http_port=0, cors_origins=("https://ok.example",))
    base = f"http://127.0.0.1:{allowed.http_port}/sdapi/v1/txt2img"
    answer = httpx.options(base, headers={**preflight, "Origin": "https://ok.example"})
    assert answer.headers["access-control-allow-origin"] == "https://ok.example"
    answer = httpx.options(base, headers=preflight)
    assert answer.headers.get("access-control-allow-origin") != "https://evil.example"


def test_grpc_engine_descriptions_name_files_not_paths(http_api, engines_file):
    import grpc
    from stability_sdk.interfaces.gooseai.engines import engines_pb2

    with grpc.insecure_channel(http_api.address) as channel:
        list_engines = channel.unary_unary("/gooseai.EnginesService/ListEngines",
                                           request_serializer=engines_pb2.ListEnginesRequest.SerializeToString,
                                           response_deserializer=engines_pb2.Engines.FromString)
        engines = list_engines(engines_pb2.ListEnginesRequest(), timeout=CALL_TIMEOUT)
    descriptions = {engine.id: engine.description for engine in engines.engine}
    assert descriptions["broken"] == "weights file missing.safetensors"
    assert all("/" not in text for text in descriptions.values())


def test_an_a1111_client_that_hangs_up_cancels_its_generation(http_api):
    import time

    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"http://127.0.0.1:{http_api.http_port}/sdapi/v1/txt2img",
                   json={"prompt": "slow", "steps": 150, "batch_size": 10, "width": SIZE, "height": SIZE}, timeout=2)
    deadline = time.monotonic() + 15
    while http_api.queue.stats() != {"running": 0, "waiting": 0}:
        assert time.monotonic() < deadline, "the abandoned generation kept running"
        time.sleep(0.05)
