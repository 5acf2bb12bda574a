"""Request -> ImaginePrompt mapping, without a server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation

from imaginairy.schema import ImaginePrompt
from imaginairy.server.engines import Engine
from imaginairy.server.protocol import SAMPLERS, request_to_prompts, sample_seeds

ENGINE = Engine(id="e", model="sd-1.5", defaults={"steps": 3})


def request(**image_fields) -> generation.Request:
    return generation.Request(engine_id="e", prompt=[generation.Prompt(text="a cat")],
                              image=generation.ImageParameters(**image_fields))


@pytest.mark.parametrize(("seeds", "samples", "expected"), [
    ([], None, [None]),
    ([0], 3, [None, None, None]),
    ([5], 3, [5, 6, 7]),
    ([5, 9], None, [5, 9]),
    ([5, 9], 4, [5, 9, 10, 11]),
    ([2**32 - 1], 2, [2**32 - 1, 1]),  # wraps past 0 (which means random) to 1
    ([2**32 - 2], 3, [2**32 - 2, 2**32 - 1, 1]),
])
def test_sample_seeds(seeds, samples, expected):
    assert sample_seeds(seeds, samples) == expected


def test_every_sampler_enum_maps_to_a_library_sampler():
    from imaginairy.schema import SAMPLER_TYPES

    assert set(SAMPLERS) == set(generation.DiffusionSampler.values())
    assert set(SAMPLERS.values()) <= set(SAMPLER_TYPES)


def test_settings_mapping():
    step = generation.StepParameter(sampler=generation.SamplerParameters(cfg_scale=4.0, eta=0.5))
    prompts = request_to_prompts(request(width=128, height=64, samples=2, seed=[11], parameters=[step],
                                         transform=generation.TransformType(diffusion=generation.SAMPLER_DDIM)),
                                 ENGINE)
    assert [p.seed for p in prompts] == [11, 12]
    first = prompts[0]
    assert (first.width, first.height, first.steps) == (128, 64, 3)
    assert (first.prompt_strength, first.ddim_eta, first.sampler_type, first.model) == (4.0, 0.5, "ddim", "sd-1.5")


def test_schedule_start_is_strength_of_the_init_image():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (100, 77)).save(buffer, format="PNG")
    req = request(parameters=[generation.StepParameter(schedule=generation.ScheduleParameters(start=0.75))])
    req.prompt.append(generation.Prompt(artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE,
                                                                     binary=buffer.getvalue())))
    (prompt,) = request_to_prompts(req, ENGINE)
    assert prompt.init_image_strength == pytest.approx(0.25)
    assert (prompt.width, prompt.height) == (96, 72)  # the init image's size, rounded down to multiples of 8

    req.image.parameters[0].schedule.start = 1.5  # seamless outpainting: full strength, boost 0.5
    (prompt,) = request_to_prompts(req, ENGINE)
    assert prompt.init_image_strength == 0 and prompt.seamless_boost == pytest.approx(0.5)


def test_transparent_init_image_gives_the_mask():
    import io

    from PIL import Image

    img = Image.new("RGBA", (64, 64), (10, 20, 30, 255))
    img.paste((0, 0, 0, 0), (0, 0, 32, 64))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    req = request()
    req.prompt.append(generation.Prompt(artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE,
                                                                     binary=buffer.getvalue())))
    (prompt,) = request_to_prompts(req, ENGINE)
    assert prompt.mask_mode == "keep"


def test_default_engines_file_names_registered_models():
    from imaginairy.models.registry import registered_models
    from imaginairy.server.engines import load_engines

    engines = load_engines()
    assert engines["stable-diffusion-v1-5"].model == "sd-1.5"
    assert all(engine.model in registered_models() for engine in engines.values())


def test_an_answer_too_large_for_one_message_carries_the_generated_image(monkeypatch):
    from PIL import Image

    from imaginairy.schema import ImagineResult
    from imaginairy.server import protocol

    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    result = ImagineResult(
        {"generated": Image.new("RGB", (64, 64), "red"), "modified_original": Image.fromarray(noise)},
        ImaginePrompt("x", seed=1),
    )
    assert len(protocol.png_bytes(result, embed_metadata=False)) > 150_000  # the large final image fits
    monkeypatch.setattr(protocol, "MAX_ANSWER_IMAGE_BYTES", 150_000)
    sent = Image.open(io.BytesIO(protocol.png_bytes(result, embed_metadata=True)))
    assert sent.size == (64, 64)


@pytest.mark.parametrize(
    "safety, reason",
    [
        ({"is_nsfw": True, "checked": True, "filtered": True}, generation.FILTER),
        ({"is_nsfw": True, "checked": True, "filtered": False}, generation.FILTER),
        ({"is_nsfw": False, "checked": True, "filtered": False}, generation.STOP),
        ({"is_nsfw": None, "checked": False, "filtered": False}, generation.STOP),
    ],
)
def test_a_flagged_image_is_answered_with_finish_reason_filter(safety, reason):
    from PIL import Image

    from imaginairy.schema import ImagineResult
    from imaginairy.server.protocol import image_answer

    prompt = ImaginePrompt("x", seed=1)
    result = ImagineResult({"generated": Image.new("RGB", (64, 64))}, prompt,
                           metadata={**prompt.to_metadata(), "safety": safety})
    answer = image_answer("r", "e", 0, result, embed_metadata=False, received_ms=0)
    assert answer.artifacts[0].finish_reason == reason
