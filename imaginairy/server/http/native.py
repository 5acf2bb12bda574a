"""Our own job API: `POST /v1/jobs` queues a generation, `GET /v1/jobs/{id}` tells its state, `DELETE` cancels it,
`GET /v1/jobs/{id}/events` streams its progress, previews and images as Server-Sent Events.

Request fields are `ImaginePrompt`'s own names (see its docs); images travel as base64 in requests and as PNG URLs
in answers. The stream's events: `progress` ({progress, step, total, image_index, preview}: preview a base64 PNG
or null), `image` ({index, url, seed}), and one last `done`, `failed` or `cancelled` ({state, error}).
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from imaginairy.errors import InvalidInputError
from imaginairy.server.http.jobs import FINISHED_STATES, TrackedJob
from imaginairy.server.http.service import HttpService
from imaginairy.server.images import decode_image
from imaginairy.server.limits import MAX_SAMPLES, MAX_STEPS, check_prompt_text

EVENT_POLL_SECONDS = 0.1
SSE_KEEPALIVE_SECONDS = 10.0


class JobRequest(BaseModel):
    """One prompt, `samples` times with consecutive seeds. Unset fields take the model's (engine's) defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., description="The prompt; A1111 syntax as `imagine` accepts it.")
    negative_prompt: str | None = None
    model: str | None = Field(None, description="An engine id (GET /sdapi/v1/sd-models); default: the current one.")
    sampler_type: str | None = None
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    prompt_strength: float | None = Field(None, description="Classifier-free guidance scale.")
    width: int | None = None
    height: int | None = None
    seed: int | None = Field(None, ge=0, description="None: a random seed.")
    samples: int = Field(1, ge=1, le=MAX_SAMPLES)
    init_image: str | None = Field(None, description="base64 PNG/JPEG")
    init_image_strength: float | None = None
    mask_image: str | None = Field(None, description="base64 PNG: what mask_mode says of its white pixels")
    mask_prompt: str | None = None
    mask_mode: Literal["replace", "keep"] | None = None
    fix_faces: bool | None = None
    upscale: bool | None = None
    tile_mode: str | None = None
    save: bool = Field(True, description="Save the images in the server's output folder (its gallery).")


class JobState(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float
    image_index: int
    step: int
    total: int | None
    images: list[str]
    seeds: list[int]
    error: str | None


def prompts_of(body: JobRequest, service: HttpService):
    import random

    from imaginairy.schema import ImaginePrompt
    from imaginairy.server.limits import SEED_MODULUS

    engine = service.engine(body.model, "model")
    fields = body.model_dump(exclude_none=True, exclude={"model", "samples", "save", "seed"})
    try:
        check_prompt_text(body.prompt, "prompt")
        check_prompt_text(body.negative_prompt or "", "negative_prompt")
        for field in ("init_image", "mask_image"):
            if field in fields:
                fields[field] = decode_image(fields[field], field)
        first = random.randrange(1, SEED_MODULUS) if body.seed is None else body.seed
        settings = {**engine.defaults, **fields, "model": engine.model, "model_config": engine.model_config}
        prompts = [ImaginePrompt(**settings, seed=(first + index) % SEED_MODULUS) for index in range(body.samples)]
    except InvalidInputError as e:
        raise HTTPException(422, str(e)) from e
    return engine, prompts


def state_of(job: TrackedJob, service: HttpService) -> JobState:
    return JobState(
        id=job.id, state=job.state, progress=job.progress, image_index=job.image_index, step=job.step,
        total=job.total, images=[image_url(job, index) for index in range(len(job.results))],
        seeds=[prompt.seed for prompt in job.prompts],
        error=service.error_response(job.error).detail if job.error is not None else None,
    )


def image_url(job: TrackedJob, index: int) -> str:
    return f"/v1/jobs/{job.id}/images/{index}"


def router(service: HttpService) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["jobs"])

    def known(job_id: str) -> TrackedJob:
        job = service.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "No such job (finished jobs are kept for a while, then forgotten).")
        return job

    @api.post("/jobs", response_model=JobState, status_code=202)
    def create_job(body: JobRequest):
        engine, prompts = prompts_of(body, service)
        return state_of(service.submit(prompts, engine, save=body.save, label="job"), service)

    @api.get("/jobs/{job_id}", response_model=JobState)
    def get_job(job_id: str):
        return state_of(known(job_id), service)

    @api.delete("/jobs/{job_id}", response_model=JobState)
    def cancel_job(job_id: str):
        job = known(job_id)
        service.queue.withdraw(job)
        return state_of(job, service)

    @api.get("/jobs/{job_id}/images/{index}", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def job_image(job_id: str, index: int):
        job = known(job_id)
        if not 0 <= index < len(job.results):
            raise HTTPException(404, f"Job {job.id} has {len(job.results)} image(s) so far.")
        return Response(service.png(job.results[index], job.engine), media_type="image/png")

    @api.get("/jobs/{job_id}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request):
        job = known(job_id)
        return StreamingResponse(events(job, service, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return api


async def events(job: TrackedJob, service: HttpService, request: Request):
    """The job's Server-Sent Events until it ends (or the client hangs up)."""
    seen_version, sent_images, sent_preview, quiet = -1, 0, 0, 0.0
    while True:
        if await request.is_disconnected():
            return
        version = job.version
        if version != seen_version:
            seen_version, quiet = version, 0.0
            preview = None
            if job.preview_serial != sent_preview:
                sent_preview, preview = job.preview_serial, job.preview_base64()
            # progress (and its preview) before the images it led to, so a page shows each finished image last
            yield sse("progress", {"state": job.state, "progress": job.progress, "step": job.step,
                                   "total": job.total, "image_index": job.image_index, "preview": preview})
            while sent_images < len(job.results):
                yield sse("image", {"index": sent_images, "url": image_url(job, sent_images),
                                    "seed": job.results[sent_images].prompt.seed})
                sent_images += 1
            if job.state in FINISHED_STATES:
                error = service.error_response(job.error).detail if job.error is not None else None
                yield sse(job.state, {"state": job.state, "error": error})
                return
        elif quiet >= SSE_KEEPALIVE_SECONDS:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(EVENT_POLL_SECONDS)
        quiet += EVENT_POLL_SECONDS


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
