"""The native job API (/v1/jobs) with httpx: a job's life, its Server-Sent Events with previews, cancellation, the
gallery, and the OpenAPI schema."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import pytest
from PIL import Image
from server_helpers import CALL_TIMEOUT, SIZE

LONG_STEPS = 150


def client(http_api) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{http_api.http_port}", timeout=CALL_TIMEOUT)


def read_events(response) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):])))
    return events


def wait_until_done(http, job_id: str) -> dict:
    deadline = time.monotonic() + CALL_TIMEOUT
    while (state := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return state


def test_job_with_events_previews_images_and_gallery(http_api):
    with client(http_api) as http:
        created = http.post("/v1/jobs", json={"prompt": "a blue bird", "steps": 4, "seed": 11, "samples": 2,
                                              "width": SIZE, "height": SIZE, "sampler_type": "k_euler"})
        assert created.status_code == 202
        job = created.json()
        assert job["seeds"] == [11, 12] and job["state"] in ("queued", "running")
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = read_events(stream)
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "done" and kinds.count("image") == 2
        previews = [data["preview"] for kind, data in events if kind == "progress" and data["preview"]]
        assert previews, "previews are sent while sampling (preview_every=1 on the test server)"
        assert Image.open(io.BytesIO(base64.b64decode(previews[0]))).size == (SIZE // 8, SIZE // 8)
        steps = [data["step"] for kind, data in events if kind == "progress" and data["image_index"] == 0]
        assert steps == sorted(steps)  # the stream samples the job every 0.1 s: steps may be skipped, never reordered
        progress = [data["progress"] for kind, data in events if kind == "progress"]
        assert progress == sorted(progress) and progress[-1] == 1.0

        state = http.get(f"/v1/jobs/{job['id']}").json()
        assert state["state"] == "done" and len(state["images"]) == 2
        image = Image.open(io.BytesIO(http.get(state["images"][1]).content))
        assert json.loads(image.info["imaginairy"])["seed"] == 12
        assert json.loads(image.info["imaginairy"])["model"] == "tiny"

        listed = http.get("/v1/gallery", params={"per_page": 2}).json()
        assert listed["total"] >= 2 and len(listed["items"]) == 2
        newest = listed["items"][0]
        assert newest["settings"]["seed"] == 12  # newest first: the second image was saved last
        saved = Image.open(io.BytesIO(http.get(newest["url"]).content))
        assert saved.size == (SIZE, SIZE)
        assert http.get("/v1/gallery", params={"page": 10_000}).json()["items"] == []


def test_cancel_a_running_job(http_api):
    with client(http_api) as http:
        job = http.post("/v1/jobs", json={"prompt": "slow", "steps": LONG_STEPS, "width": SIZE, "height": SIZE,
                                          "save": False}).json()
        deadline = time.monotonic() + CALL_TIMEOUT
        while http.get(f"/v1/jobs/{job['id']}").json()["step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        start = time.monotonic()
        assert http.delete(f"/v1/jobs/{job['id']}").status_code == 200
        state = wait_until_done(http, job["id"])
        assert state["state"] == "cancelled" and time.monotonic() - start < 10
        assert state["step"] < LONG_STEPS


def test_cancel_a_queued_job_frees_its_place(http_api):
    with client(http_api) as http:
        running = http.post("/v1/jobs", json={"prompt": "slow", "steps": LONG_STEPS, "width": SIZE,
                                              "height": SIZE, "save": False}).json()
        queued = http.post("/v1/jobs", json={"prompt": "next", "width": SIZE, "height": SIZE, "save": False}).json()
        assert http.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"
        http.delete(f"/v1/jobs/{queued['id']}")
        assert wait_until_done(http, queued["id"])["state"] == "cancelled"
        http.delete(f"/v1/jobs/{running['id']}")
        assert wait_until_done(http, running["id"])["state"] == "cancelled"


@pytest.mark.parametrize(("body", "named"), [
    ({"prompt": "x", "clip_guidance": 1}, "clip_guidance"),
    ({"prompt": "x", "model": "nope"}, "model"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "sampler_type": "unknown"}, "sampler_type"),
    ({"prompt": "x", "init_image": "aGVsbG8="}, "init_image"),
    ({}, "prompt"),
])
def test_bad_job_requests_are_422_naming_the_field(http_api, body, named):
    with client(http_api) as http:
        answer = http.post("/v1/jobs", json=body)
    assert answer.status_code == 422 and named in answer.json()["detail"], answer.text


def test_unknown_job_is_404(http_api):
    with client(http_api) as http:
        assert http.get("/v1/jobs/nope").status_code == 404
        assert http.get("/v1/jobs/nope/events").status_code == 404


def test_openapi_schema_is_valid_and_documents_both_apis(http_api):
    from openapi_spec_validator import validate

    with client(http_api) as http:
        schema = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    validate(schema)
    paths = set(schema["paths"])
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/v1/jobs", "/v1/jobs/{job_id}",
            "/v1/jobs/{job_id}/events"} <= paths
    txt2img = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert txt2img["cfg_scale"]["default"] == 7.0 and txt2img["seed"]["default"] == -1
