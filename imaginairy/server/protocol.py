"""The Stability-AI gRPC messages and our data: a `gooseai.Request` -> `ImaginePrompt`s, an `ImagineResult` -> `Answer`.

Plain functions over the protobuf classes that ship in `stability-sdk`; nothing here touches the network or a model.
Every problem with a request raises `BadRequest` (or another `InvalidInputError`), which the service answers with
INVALID_ARGUMENT and the message.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import uuid
from typing import TYPE_CHECKING

from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation

from imaginairy.errors import InvalidInputError
from imaginairy.schema import ImaginePrompt
from imaginairy.server.defaults import MAX_ANSWER_IMAGE_BYTES
from imaginairy.server.limits import (
    MAX_SAMPLES,
    MAX_SIDE,
    MIN_SIDE,
    SEED_MODULUS,
    SIZE_MULTIPLE,
    check_prompt_text,
    check_side,
    check_steps,
)

if TYPE_CHECKING:
    from PIL import Image

    from imaginairy.schema import ImagineResult
    from imaginairy.server.engines import Engine

logger = logging.getLogger(__name__)

# The Stability sampler enum -> our sampler names. SAMPLER_DDIM is 0, the proto3 default, so a request names a
# sampler only when `transform.diffusion` is present (HasField), never by its value.
SAMPLERS = {
    generation.SAMPLER_DDIM: "ddim",
    generation.SAMPLER_DDPM: "plms",  # stability-sdk's own name table calls this enum value "plms"
    generation.SAMPLER_K_EULER: "k_euler",
    generation.SAMPLER_K_EULER_ANCESTRAL: "k_euler_a",
    generation.SAMPLER_K_HEUN: "k_heun",
    generation.SAMPLER_K_DPM_2: "k_dpm_2",
    generation.SAMPLER_K_DPM_2_ANCESTRAL: "k_dpm_2_a",
    generation.SAMPLER_K_LMS: "k_lms",
    generation.SAMPLER_K_DPMPP_2S_ANCESTRAL: "k_dpmpp_2s_a",
    generation.SAMPLER_K_DPMPP_2M: "k_dpmpp_2m",
    generation.SAMPLER_K_DPMPP_SDE: "k_dpmpp_sde",
}

MAX_SCHEDULE_START = 2.0
PNG_MIME = "image/png"
LARGEST_DEFAULT_SIDE = 1024  # no model's default size is larger (SDXL)
METADATA_OVERHEAD_BYTES = 8192  # the settings besides the prompt, in both formats



class BadRequest(InvalidInputError):
    """A request the server cannot carry out as sent; the message says what to change."""


@dataclasses.dataclass
class ImageInputs:
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None


# The request fields this server carries out (paths of set fields); any other set field is refused by name.
SERVED_FIELDS = {
    "engine_id", "request_id", "requested_type", "prompt", "prompt.text", "prompt.tokens", "prompt.parameters",
    "prompt.parameters.weight", "prompt.artifact", "prompt.artifact.type", "prompt.artifact.binary",
    "prompt.artifact.mime", "prompt.artifact.id", "prompt.artifact.index", "prompt.artifact.uuid",
    "prompt.artifact.size", "prompt.artifact.magic",
    "image", "image.height", "image.width", "image.seed", "image.samples", "image.steps", "image.transform",
    "image.transform.diffusion", "image.transform.upscaler", "image.parameters", "image.parameters.sampler",
    "image.parameters.sampler.cfg_scale", "image.parameters.sampler.eta", "image.parameters.schedule",
    "image.parameters.schedule.start", "image.parameters.schedule.end",
    # masked areas start from the original image (MASKED_AREA_INIT_ORIGINAL); api.Context.inpaint sends ZERO by
    # default, and at full strength (schedule.start 1) the two are the same
    "image.masked_area_init",
    # StabilityInference always sends an adapter message; only adapter_type (left at T2IADAPTER_NONE) turns it on
    "image.adapter", "image.adapter.adapter_strength", "image.adapter.adapter_init_type",
    "extras",  # api.Context always sends an empty Struct; its fields (style presets) are not served
}
# schedule.end: the fraction of noise left at the last step; the samplers here always run to the end, which is what
# stability-sdk's default end (0.01) asks for
MAX_SCHEDULE_END = 0.01


def check_served_fields(message, path: str = "") -> None:
    """BadRequest naming the first set field of `message` (a Request) that this server does not carry out."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if name not in SERVED_FIELDS:
            raise BadRequest(f"Request field {name} is not supported by this server; leave it unset.")
        if name == "image.parameters" and len(value) > 1:
            raise BadRequest(f"image.parameters has {len(value)} step parameters; this server runs one step "
                             "parameter (send a single StepParameter).")
        if field.message_type is None:
            continue
        for item in value if field.label == field.LABEL_REPEATED else [value]:
            check_served_fields(item, f"{name}.")
    if path == "image.parameters.":
        schedule = message.schedule
        if schedule.HasField("end") and not 0 <= schedule.end <= MAX_SCHEDULE_END:
            raise BadRequest(f"image.parameters.schedule.end={schedule.end:g} is not supported; this server always "
                             f"samples to the end (leave it unset, or at most {MAX_SCHEDULE_END}).")


def request_to_prompts(request: generation.Request, engine: Engine) -> list[ImaginePrompt]:
    """One `ImaginePrompt` per requested sample, in sample order, for the model `engine` names."""
    check_request_kind(request)
    check_served_fields(request)
    texts = text_prompts(request.prompt)
    images = image_inputs(request.prompt)
    if not any(text for text, weight in texts if weight > 0) and images.init_image is None:
        raise BadRequest("The request has no prompt: send at least one text prompt with a positive weight, "
                         "or an init image.")
    image = request.image
    step = first_step_parameters(image)
    settings = {
        **engine.defaults,
        "prompt": [{"text": text, "weight": weight} for text, weight in texts],
        "init_image": images.init_image,
        "model": engine.model,
        "model_config": engine.model_config,
        **size_settings(image, images.init_image),
        **sampler_settings(image),
        **guidance_settings(step),
        **strength_settings(step, images),
    }
    if image.HasField("steps"):
        settings["steps"] = check_steps(image.steps)
    seeds = sample_seeds(list(image.seed), image.samples if image.HasField("samples") else None)
    prompts = [ImaginePrompt(**settings, seed=seed) for seed in seeds]
    check_answer_fits(prompts[0].width or LARGEST_DEFAULT_SIDE, prompts[0].height or LARGEST_DEFAULT_SIDE,
                      sum(len(text) for text, _ in texts))
    return prompts


def check_answer_fits(width: int, height: int, prompt_chars: int, budget: int = MAX_ANSWER_IMAGE_BYTES) -> None:
    """BadRequest, before any work, when one answer's PNG could exceed what a message holds: the PNG of noise at
    that size (a byte per channel and row filter, deflate's stored-block overhead) plus metadata that embeds the
    prompt twice (as our JSON and as A1111 infotext, up to 6 UTF-8 bytes per escaped character)."""
    worst_png = height * (width * 3 + 1) * 1.001 + 1024
    worst_metadata = 2 * 6 * prompt_chars + METADATA_OVERHEAD_BYTES
    if worst_png + worst_metadata > budget:
        raise BadRequest(f"A {width}x{height} image with a {prompt_chars}-character prompt may not fit in one answer "
                         f"({budget} bytes); ask for a smaller size or a shorter prompt.")


def check_request_kind(request: generation.Request) -> None:
    params = request.WhichOneof("params")
    if params not in (None, "image"):
        raise BadRequest(f"Only image generation is served here; this request carries {params!r} parameters.")
    if request.requested_type not in (generation.ARTIFACT_NONE, generation.ARTIFACT_IMAGE):
        wanted = generation.ArtifactType.Name(request.requested_type)
        raise BadRequest(f"requested_type {wanted} is not served; this server returns ARTIFACT_IMAGE only.")


def text_prompts(prompts) -> list[tuple[str, float]]:
    """The text prompts as (text, weight); weight < 0 makes a negative prompt (ImaginePrompt sorts them)."""
    texts = []
    for prompt in prompts:
        kind = prompt.WhichOneof("prompt")
        if kind == "tokens":
            raise BadRequest("Token prompts are not supported; send the prompt as text.")
        if kind != "text":
            continue
        check_prompt_text(prompt.text, "A text prompt")
        weight = prompt.parameters.weight if prompt.parameters.HasField("weight") else 1.0
        if weight == 0:
            raise BadRequest(f"Prompt {prompt.text!r} has weight 0; use a positive weight, or a negative one for a "
                             "negative prompt.")
        texts.append((prompt.text, weight))
    return texts


def image_inputs(prompts) -> ImageInputs:
    from imaginairy.utils.images import alpha_channel, has_transparent_pixels

    inputs = ImageInputs()
    for prompt in prompts:
        if prompt.WhichOneof("prompt") != "artifact":
            continue
        artifact = prompt.artifact
        if artifact.type == generation.ARTIFACT_IMAGE:
            if inputs.init_image is not None:
                raise BadRequest("More than one ARTIFACT_IMAGE prompt; send a single init image.")
            inputs.init_image = decode_image(artifact, "init image")
        elif artifact.type == generation.ARTIFACT_MASK:
            if inputs.mask_image is not None:
                raise BadRequest("More than one ARTIFACT_MASK prompt; send a single mask.")
            inputs.mask_image = decode_image(artifact, "mask").convert("L")
        else:
            kind = generation.ArtifactType.Name(artifact.type)
            raise BadRequest(f"{kind} prompts are not supported; send ARTIFACT_IMAGE (init image) or ARTIFACT_MASK.")
    if inputs.mask_image is not None and inputs.init_image is None:
        raise BadRequest("A mask was sent without an init image; send the image to inpaint as an ARTIFACT_IMAGE "
                         "prompt too.")
    if inputs.init_image is not None:
        alpha = alpha_channel(inputs.init_image)
        if inputs.mask_image is None and has_transparent_pixels(alpha):
            inputs.mask_image = alpha  # outpainting: the transparent pixels are regenerated, opaque ones kept
        inputs.init_image = inputs.init_image.convert("RGB")
    return inputs


def decode_image(artifact: generation.Artifact, what: str) -> Image.Image:
    from imaginairy.server.images import open_image_bytes

    if artifact.WhichOneof("data") != "binary":
        raise BadRequest(f"The {what} must be sent as image file bytes (Artifact.binary), e.g. PNG.")
    return open_image_bytes(artifact.binary, f"The {what}")


def size_settings(image: generation.ImageParameters, init_image: Image.Image | None) -> dict:
    """The requested width/height, else the init image's (rounded down to a multiple of 8); unset: the engine's."""
    settings = {}
    for field in ("width", "height"):
        if image.HasField(field):
            settings[field] = check_side(getattr(image, field), field)
        elif init_image is not None:
            side = init_image.width if field == "width" else init_image.height
            settings[field] = max(MIN_SIDE, min(MAX_SIDE, side // SIZE_MULTIPLE * SIZE_MULTIPLE))
    return settings




def sample_seeds(seeds: list[int], samples: int | None) -> list[int | None]:
    """The seed of each sample: one seed s for n samples gives s, s+1, ...; seed 0 (or none) is a random seed."""
    if samples is None:
        samples = max(1, len(seeds))
    if not 1 <= samples <= MAX_SAMPLES:
        raise BadRequest(f"samples must be from 1 to {MAX_SAMPLES}, got {samples}.")
    if len(seeds) > samples:
        raise BadRequest(f"{len(seeds)} seeds were sent for {samples} samples; send at most one seed per sample.")
    if not seeds:
        return [None] * samples
    # counting on from the last seed within 1..2**32-1: 0 means "random", so 4294967295 is followed by 1
    continued = [(seeds[-1] - 1 + offset) % (SEED_MODULUS - 1) + 1 for offset in range(1, samples - len(seeds) + 1)]
    if seeds[-1] == 0:
        continued = [0] * len(continued)
    return [seed or None for seed in seeds + continued]


def first_step_parameters(image: generation.ImageParameters) -> generation.StepParameter:
    """The settings of the first (and only supported) step; an empty message when none was sent."""
    return image.parameters[0] if image.parameters else generation.StepParameter()


def sampler_settings(image: generation.ImageParameters) -> dict:
    if not image.HasField("transform"):
        return {}
    kind = image.transform.WhichOneof("type")
    if kind != "diffusion":
        raise BadRequest(f"transform.{kind} is not served; only transform.diffusion (a sampler) is.")
    sampler = image.transform.diffusion
    if sampler not in SAMPLERS:
        known = ", ".join(f"{generation.DiffusionSampler.Name(value)} ({value})" for value in SAMPLERS)
        raise BadRequest(f"Unknown sampler {sampler}; use one of: {known}.")
    return {"sampler_type": SAMPLERS[sampler]}


def guidance_settings(step: generation.StepParameter) -> dict:
    settings = {}
    if step.sampler.HasField("cfg_scale"):
        settings["prompt_strength"] = step.sampler.cfg_scale
    if step.sampler.HasField("eta"):
        settings["ddim_eta"] = step.sampler.eta
    return settings


def strength_settings(step: generation.StepParameter, images: ImageInputs) -> dict:
    """`schedule.start` (how much noise the init image gets, 0..1; 1 < start <= 2: seamless outpainting) and the mask.

    start <= 1 keeps 1 - start of the init image; start in (1, 2] generates at full strength with a seamless boost
    of start - 1 at the mask's edges.
    """
    start = step.schedule.start if step.schedule.HasField("start") else None
    if start is not None and not 0 <= start <= MAX_SCHEDULE_START:
        raise BadRequest(f"schedule.start (strength) must be from 0 to {MAX_SCHEDULE_START:g}, got {start:g}.")
    seamless = start is not None and start > 1
    settings = {}
    if images.init_image is not None and start is not None:
        settings["init_image_strength"] = 0.0 if seamless else 1.0 - start
    if images.mask_image is None and not seamless:
        return settings
    if images.mask_image is not None:
        # The Stability API's mask marks what to keep in white (and what to repaint in black), as does the alpha
        # channel of an init image (opaque: keep).
        settings["mask_image"] = images.mask_image
        settings["mask_mode"] = "keep"
    if seamless:
        settings["seamless_boost"] = start - 1
    return settings


def image_answer(
    request_id: str, engine_id: str, index: int, result: ImagineResult, *, embed_metadata: bool, received_ms: int
) -> generation.Answer:
    """The Answer carrying one generated image as a PNG artifact."""
    png = png_bytes(result, embed_metadata=embed_metadata)
    artifact = generation.Artifact(
        id=index,
        type=generation.ARTIFACT_IMAGE,
        mime=PNG_MIME,
        binary=png,
        index=index,
        seed=result.prompt.seed % SEED_MODULUS,
        finish_reason=finish_reason(result),
        uuid=str(uuid.uuid4()),
        size=len(png),
    )
    return generation.Answer(
        answer_id=str(uuid.uuid4()),
        request_id=request_id,
        received=received_ms,
        created=now_ms(),
        meta=generation.AnswerMeta(engine_id=engine_id),
        artifacts=[artifact],
    )


def keepalive_answer(request_id: str, received_ms: int) -> generation.Answer:
    """An Answer with no artifacts: tells the client the request is still being worked on."""
    return generation.Answer(answer_id=str(uuid.uuid4()), request_id=request_id, received=received_ms,
                             created=now_ms())


def finish_reason(result: ImagineResult) -> int:
    """FILTER when the safety checker flagged the image (in `filter` mode the image sent is the blurred one), else
    STOP."""
    return generation.FILTER if result.metadata.get("safety", {}).get("is_nsfw") else generation.STOP


def png_bytes(result: ImagineResult, *, embed_metadata: bool) -> bytes:
    """The final image as PNG; when that is too large for one answer (an edit pasted into a very large init image),
    the image at its generated size instead."""
    png = encode_png(result.img, result.metadata if embed_metadata else None)
    if len(png) > MAX_ANSWER_IMAGE_BYTES and result.final_kind != "generated":
        logger.warning("the %s image is %d bytes, more than one answer holds: sending the generated image",
                       result.final_kind, len(png))
        png = encode_png(result.images["generated"], result.metadata if embed_metadata else None)
    return png


def encode_png(img: Image.Image, metadata: dict | None) -> bytes:
    from imaginairy.utils.metadata import write_image_with_metadata

    buffer = io.BytesIO()
    if metadata is not None:
        write_image_with_metadata(img, buffer, "PNG", metadata)
    else:
        img.save(buffer, format="PNG")
    return buffer.getvalue()


def now_ms() -> int:
    return int(time.time() * 1000)
