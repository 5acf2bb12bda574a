"""AUTOMATIC1111's `/sdapi/v1` API: the routes and JSON shapes its clients use, over our models and queue.

Field names and defaults follow A1111's `modules/api/models.py` and `modules/processing.py` (the request models are
built from the processing classes' constructor arguments). Every field A1111 knows is accepted; a field we do not
implement is accepted only at a value that means "off" (A1111's default, or the one common clients such as
`webuiapi` always send), and any other value is answered 422 naming the field. Unknown fields are 422 too.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from imaginairy.errors import InvalidInputError
from imaginairy.server.http import a1111_edit
from imaginairy.server.http.a1111_edit import UPSCALERS
from imaginairy.server.http.jobs import CANCELLED, DONE, FINISHED_STATES, TrackedJob
from imaginairy.server.http.service import HttpService
from imaginairy.server.images import decode_image, png_base64
from imaginairy.server.limits import MAX_SAMPLES, SEED_MODULUS, check_prompt_text, check_side, check_steps
from imaginairy.utils.metadata import A1111_SAMPLER_NAMES

SAMPLERS_BY_A1111_NAME = {name: ours for ours, name in A1111_SAMPLER_NAMES.items()}
AUTOMATIC_SCHEDULER = "automatic"
WAIT_POLL_SECONDS = 0.05
ANY = object()  # a field that has no effect in the request as sent (e.g. hires settings with enable_hr off)

# Fields we do not implement -> the values that leave them off. Hires fields are inert unless enable_hr is set.
OFF_VALUES: dict[str, tuple] = {
    "styles": (None, []),
    "subseed_strength": (None, 0, 0.0),
    "seed_resize_from_h": (None, 0, -1),
    "seed_resize_from_w": (None, 0, -1),
    "enable_hr": (False, None),
    "s_min_uncond": (None, 0, 0.0),
    "s_churn": (None, 0, 0.0),
    "s_tmax": (None, 0, 0.0, float("inf")),
    "s_tmin": (None, 0, 0.0),
    "s_noise": (None, 1, 1.0),
    "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None,),
    "firstpass_image": (None,),
    "script_name": (None, ""),
    "script_args": (None, []),
    "alwayson_scripts": (None, {}),
    "disable_extra_networks": (False, None),
    "initial_noise_multiplier": (None, 1, 1.0),
    "latent_mask": (None,),
    "include_init_images": (False, None),
    "image_cfg_scale": ANY,  # used by instruct-pix2pix models only, which this server does not load
    "comments": ANY,
    "infotext": (None, ""),
    "force_task_id": ANY,
    "seed_enable_extras": ANY,
    "do_not_save_samples": ANY,  # nothing is saved unless save_images is set
    "do_not_save_grid": ANY,  # no grids are made
    "override_settings_restore_afterwards": ANY,  # override_settings apply to the request only
    "subseed": ANY,  # inert while subseed_strength is 0
    "firstphase_width": (None, 0),
    "firstphase_height": (None, 0),
    **{field: ANY for field in ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
                                "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                                "hr_negative_prompt", "hr_additional_modules", "hr_cfg", "hr_distilled_cfg")},
    "mask_round": ANY,  # our masks are blended, not rounded; the mask is used as sent
    "mask_blur_x": ANY,
    "mask_blur_y": ANY,  # A1111 sets both from mask_blur, which is what we read
}
OVERRIDABLE_OPTIONS = {"sd_model_checkpoint"}


class A1111Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # A1111's default "Euler"; None here: the engine's sampler
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None  # None: the engine's steps (A1111: 50)
    cfg_scale: float = 7.0
    width: int | None = None  # None: the model's size (512 for SD 1.x)
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    eta: float | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    save_images: bool = False
    # accepted only when off: see OFF_VALUES
    styles: list[str] | None = None
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Txt2ImgRequest(A1111Request):
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_additional_modules: list[str] | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = None
    hr_distilled_cfg: float | None = None


class Img2ImgRequest(A1111Request):
    init_images: list[str] | None = None
    resize_mode: int = 0  # 0: just resize, 1: crop and resize
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0  # 0: fill, 1: original
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float | None = 0.75


class ImagesResponse(BaseModel):
    images: list[str] | None
    parameters: dict[str, Any]
    info: str


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class InterrogateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = ""
    model: str = "clip"


class ExtrasSingleImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = ""
    resize_mode: int = 0  # 0: by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


def check_off(request: BaseModel) -> None:
    """422 naming the first field we do not implement that the request sets to something other than "off"."""
    for field, value in request:
        accepted = OFF_VALUES.get(field)
        if accepted is None or accepted is ANY:
            continue
        if value not in accepted:
            off = next((choice for choice in accepted if choice is not None), None)
            raise HTTPException(422, f"{field}={value!r} is not supported by this server; leave it out or send "
                                     f"{off!r}.")
    if getattr(request, "enable_hr", False):
        raise HTTPException(422, "enable_hr (hires fix) is not supported by this server; generate at the final "
                                 "size, or upscale with /sdapi/v1/extra-single-image.")


def sampler_type(request: A1111Request) -> str | None:
    name = request.sampler_name or request.sampler_index
    if name is None:
        return None
    if name in SAMPLERS_BY_A1111_NAME:
        return SAMPLERS_BY_A1111_NAME[name]
    if name in A1111_SAMPLER_NAMES:  # our own names are aliases
        return name
    raise HTTPException(422, f"sampler_name: unknown sampler {name!r}; GET /sdapi/v1/samplers lists them.")


def base_settings(request: A1111Request, service: HttpService):
    """The engine and the ImaginePrompt settings every A1111 generation request shares."""
    check_off(request)
    override = dict(request.override_settings or {})
    unknown = sorted(set(override) - OVERRIDABLE_OPTIONS)
    if unknown:
        raise HTTPException(422, f"override_settings: {unknown[0]!r} is not supported; only "
                                 f"{', '.join(sorted(OVERRIDABLE_OPTIONS))} is.")
    engine = service.engine(override.get("sd_model_checkpoint"), "override_settings.sd_model_checkpoint")
    if request.scheduler not in (None, AUTOMATIC_SCHEDULER, "Automatic"):
        raise HTTPException(422, f"scheduler={request.scheduler!r} is not supported; this server uses each "
                                 f"sampler's own schedule ({AUTOMATIC_SCHEDULER!r}).")
    count = request.batch_size * request.n_iter
    if not 1 <= count <= MAX_SAMPLES:
        raise HTTPException(422, f"batch_size x n_iter must be from 1 to {MAX_SAMPLES}, got {count}.")
    for field in ("prompt", "negative_prompt"):
        try:
            check_prompt_text(getattr(request, field), field)
        except InvalidInputError as e:
            raise HTTPException(422, str(e)) from e
    settings = {**engine.defaults, "prompt": request.prompt, "negative_prompt": request.negative_prompt or None,
                "prompt_strength": request.cfg_scale, "model": engine.model, "model_config": engine.model_config}
    try:
        if request.steps is not None:
            settings["steps"] = check_steps(request.steps)
        for field in ("width", "height"):
            if getattr(request, field) is not None:
                settings[field] = check_side(getattr(request, field), field)
    except InvalidInputError as e:
        raise HTTPException(422, str(e)) from e
    sampler = sampler_type(request)
    if sampler is not None:
        settings["sampler_type"] = sampler
    if request.restore_faces:
        settings["fix_faces"] = True
    if request.tiling:
        settings["tile_mode"] = "xy"
    if request.eta is not None:
        if settings.get("sampler_type") == "ddim":
            settings["ddim_eta"] = request.eta
        elif request.eta not in (0, 1):  # k-diffusion's ancestral samplers run at eta 1, the others have none
            raise HTTPException(422, f"eta={request.eta} is only supported with the DDIM sampler.")
    return engine, settings, count


def seeds_for(seed: int, count: int) -> list[int]:
    """A1111: seed -1 is random; image i of a batch gets seed + i."""
    if seed < -1:
        raise HTTPException(422, f"seed must be -1 (random) or from 0 to {SEED_MODULUS - 1}, got {seed}.")
    first = random.randrange(SEED_MODULUS) if seed == -1 else seed
    return [(first + index) % SEED_MODULUS for index in range(count)]


def make_prompts(settings: dict, seeds: list[int]):
    from imaginairy.schema import ImaginePrompt

    try:
        return [ImaginePrompt(**settings, seed=seed) for seed in seeds]
    except InvalidInputError as e:
        raise HTTPException(422, str(e)) from e


async def finished(job: TrackedJob, service: HttpService, request: Request) -> None:
    """Wait for the job to end; a client that hangs up withdraws it (from the queue, or from the device)."""
    while job.state not in FINISHED_STATES:
        if await request.is_disconnected():
            service.queue.withdraw(job)
        await asyncio.sleep(WAIT_POLL_SECONDS)


def images_response(job: TrackedJob, service: HttpService, request: A1111Request) -> dict:
    if job.state not in (DONE, CANCELLED):
        raise service.error_response(job.error)
    if job.state == CANCELLED and service.queue.closed:
        raise HTTPException(503, "The server is shutting down; try again later.")
    results = job.results
    infotexts = [service_infotext(result, job) for result in results]
    first = results[0].prompt if results else job.prompts[0]
    info = {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(job.prompts),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(job.prompts),
        "seed": first.seed,
        "all_seeds": [prompt.seed for prompt in job.prompts],
        "subseed": -1,
        "all_subseeds": [-1] * len(job.prompts),
        "subseed_strength": 0,
        "width": first.width,
        "height": first.height,
        "sampler_name": A1111_SAMPLER_NAMES.get(first.sampler_type, first.sampler_type),
        "cfg_scale": first.prompt_strength,
        "steps": first.steps,
        "batch_size": request.batch_size,
        "restore_faces": bool(first.fix_faces),
        "sd_model_name": job.engine.id,
        "sd_model_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "interrupted": job.state == CANCELLED,
        "version": "imaginairy",
    }
    parameters = request.model_dump()
    if isinstance(request, Img2ImgRequest):
        parameters["init_images"] = None  # A1111 leaves the (large) inputs out of the echo
        parameters["mask"] = None
    images = [png_base64(service.png(result, job.engine)) for result in results] if request.send_images else None
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


def service_infotext(result, job: TrackedJob) -> str:
    from imaginairy.server.redact import public_metadata
    from imaginairy.utils.metadata import a1111_parameters

    return a1111_parameters(public_metadata(result.metadata, job.engine))


def router(service: HttpService) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])

    @api.post("/txt2img", response_model=ImagesResponse)
    async def txt2img(body: Txt2ImgRequest, request: Request):
        engine, settings, count = base_settings(body, service)
        prompts = make_prompts(settings, seeds_for(body.seed, count))
        job = service.submit(prompts, engine, save=body.save_images, label="txt2img")
        await finished(job, service, request)
        return images_response(job, service, body)

    @api.post("/img2img", response_model=ImagesResponse)
    async def img2img(body: Img2ImgRequest, request: Request):
        engine, settings, count = base_settings(body, service)
        edit = a1111_edit.prepare(body, settings)
        prompts = make_prompts(settings, seeds_for(body.seed, count))
        job = service.submit(prompts, engine, save=body.save_images, label="img2img", finish=edit.finish)
        await finished(job, service, request)
        return images_response(job, service, body)

    @api.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False):
        running = service.queue.running()
        stats = service.queue.stats()
        job_count = stats["running"] + stats["waiting"]
        if not isinstance(running, TrackedJob):
            return ProgressResponse(progress=0, eta_relative=0, state=ProgressState(job_count=job_count))
        eta = running.eta_seconds()
        return ProgressResponse(
            progress=running.progress,
            eta_relative=eta or 0,
            state=ProgressState(
                interrupted=running.cancel_event.is_set(), job=f"task({running.id})", job_count=job_count,
                job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(running.created)),
                job_no=running.image_index, sampling_step=running.step, sampling_steps=running.total or 0),
            current_image=None if skip_current_image else running.preview_base64(),
        )

    @api.post("/interrupt")
    def interrupt():
        running = service.queue.running()
        if running is not None:
            running.cancel_event.set()
        return {}

    @api.get("/sd-models")
    def sd_models():
        return [{"title": engine.id, "model_name": engine.id, "hash": None, "sha256": None, "filename": engine.id,
                 "config": None} for engine in service.engines.values()]

    @api.get("/samplers")
    def samplers():
        return [{"name": name, "aliases": [ours], "options": {}} for ours, name in A1111_SAMPLER_NAMES.items()]

    @api.get("/schedulers")
    def schedulers():
        return [{"name": AUTOMATIC_SCHEDULER, "label": "Automatic", "aliases": None, "default_rho": -1,
                 "need_inner_model": False}]

    @api.get("/upscalers")
    def upscalers():
        return [{"name": name, "model_name": ours if ours == "realesrgan" else None, "model_path": None,
                 "model_url": None, "scale": scale} for name, (ours, scale) in UPSCALERS.items()]

    @api.get("/loras")
    def loras():
        return [{"name": name, "alias": name, "path": name, "metadata": {}} for name in library_names("loras")]

    @api.get("/embeddings")
    def embeddings():
        """A1111's shape; the embeddings are checked when a prompt uses them, so all are "loaded" here."""
        return {"loaded": {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                                  "vectors": None} for name in library_names("embeddings")}, "skipped": {}}

    def library_names(kind: str) -> list[str]:
        """The names of the models folder's files of one kind (never their server-side paths)."""
        from imaginairy.models import library

        root = library.models_dir(service.settings.models_dir)
        return [library.file_name(kind, root, path) for path in library.list_files(kind, root)]

    @api.get("/options")
    def get_options():
        return {"sd_model_checkpoint": service.current_engine.id, "samples_format": "png"}

    @api.post("/options")
    def set_options(options: dict[str, Any]):
        unknown = sorted(set(options) - OVERRIDABLE_OPTIONS)
        if unknown:
            raise HTTPException(422, f"option {unknown[0]!r} cannot be set on this server; only "
                                     f"{', '.join(sorted(OVERRIDABLE_OPTIONS))} can.")
        if "sd_model_checkpoint" in options:
            service.select_engine(str(options["sd_model_checkpoint"]))
        return None

    @api.post("/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoRequest):
        from imaginairy.server.http.infotext import parse_infotext

        img = decode_or_422(body.image, "image")
        texts = {key: value for key, value in img.info.items() if isinstance(key, str) and isinstance(value, str)}
        info = texts.pop("parameters", "")
        return {"info": info, "items": texts, "parameters": parse_infotext(info) if info else {}}

    @api.post("/interrogate")
    async def interrogate(body: InterrogateRequest, request: Request):
        if body.model != "clip":
            raise HTTPException(422, f"model={body.model!r} is not supported; this server captions with BLIP "
                                     "(model 'clip').")
        img = decode_or_422(body.image, "image").convert("RGB")

        def caption():
            from imaginairy.enhancers.describe import generate_caption

            return generate_caption(img)

        job = service.run_task(caption, "interrogate")
        await finished(job, service, request)
        return {"caption": task_result(job, service)}

    @api.post("/extra-single-image")
    async def extra_single_image(body: ExtrasSingleImageRequest, request: Request):
        task = a1111_edit.extras_task(body, decode_or_422(body.image, "image"))
        job = service.run_task(task, "extras")
        await finished(job, service, request)
        return {"html_info": "", "image": png_base64(encode_plain_png(task_result(job, service)))}

    return api


def task_result(job: TrackedJob, service: HttpService):
    if job.state != DONE:
        raise service.error_response(job.error)
    return job.results[0]


def encode_plain_png(img) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_or_422(data: str, field: str):
    try:
        return decode_image(data, field)
    except InvalidInputError as e:
        raise HTTPException(422, str(e)) from e
