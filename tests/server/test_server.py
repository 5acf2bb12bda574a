"""The gRPC server against the real stability-sdk clients and the SDK's own gRPC stubs, on 127.0.0.1.

stability-sdk's clients open an insecure channel for any host not ending in 443, and then drop the API key (they
send call credentials only over TLS). So the auth tests send the token as `authorization` metadata on the SDK stub,
and hand `api.Context` such a stub (its `stub=` argument, the supported way to give it a channel).
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from server_helpers import (
    CALL_TIMEOUT,
    SIZE,
    TOKEN,
    decoded,
    image_artifacts,
    png_bytes,
    settings_of,
    text_request,
    wait_for,
)
from stability_sdk import api
from stability_sdk.client import StabilityInference
from stability_sdk.interfaces.gooseai.engines import engines_pb2
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc

LONG_STEPS = 150  # a generation that runs until it is cancelled


def client(server, engine: str = "tiny") -> StabilityInference:
    return StabilityInference(host=server.address, engine=engine, wait_for_ready=False)



def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    return caught.value


def long_call(stub, **fields):
    """Start a generation that would run for minutes; returns the call (cancel it to stop it)."""
    call = stub.Generate(text_request(steps=LONG_STEPS, samples=10, **fields), timeout=CALL_TIMEOUT)
    return call


# --- generation --------------------------------------------------------------------------------------------------


def test_txt2img_several_samples_with_consecutive_seeds_and_metadata(server):
    answers = list(client(server).generate("a red apple", width=SIZE, height=SIZE, steps=2, samples=3, seed=1234,
                                           sampler=generation.SAMPLER_K_EULER))
    artifacts = image_artifacts(answers)
    assert [a.index for a in artifacts] == [0, 1, 2]
    assert [a.seed for a in artifacts] == [1234, 1235, 1236]
    assert all(a.finish_reason == generation.STOP and a.mime == "image/png" for a in artifacts)
    settings = [settings_of(a) for a in artifacts]
    assert [s["seed"] for s in settings] == [1234, 1235, 1236]
    assert settings[0]["prompt"] == [{"text": "a red apple", "weight": 1.0}]
    assert settings[0]["sampler_type"] == "k_euler" and settings[0]["steps"] == 2
    assert decoded(artifacts[0]).size == (SIZE, SIZE)
    assert "parameters" in decoded(artifacts[0]).info

    again = image_artifacts(client(server).generate("a red apple", width=SIZE, height=SIZE, steps=2, seed=1235,
                                                    sampler=generation.SAMPLER_K_EULER))
    assert np.array_equal(np.asarray(decoded(again[0])), np.asarray(decoded(artifacts[1])))


@pytest.mark.parametrize(("sampler", "name"), [
    (generation.SAMPLER_DDIM, "ddim"),  # enum 0: only a request with the field present asks for it
    (generation.SAMPLER_DDPM, "plms"),
    (generation.SAMPLER_K_EULER_ANCESTRAL, "k_euler_a"),
    (generation.SAMPLER_K_DPMPP_2M, "k_dpmpp_2m"),
])
def test_samplers(stub, sampler, name):
    request = text_request(steps=2, transform=generation.TransformType(diffusion=sampler))
    (artifact,) = image_artifacts(stub.Generate(request, timeout=CALL_TIMEOUT))
    assert settings_of(artifact)["sampler_type"] == name


def test_unset_fields_get_imagine_prompt_defaults_and_zero_seed_is_random(stub):
    from imaginairy.schema import ImaginePrompt

    request = text_request(steps=None, seed=[0])
    (artifact,) = image_artifacts(stub.Generate(request, timeout=CALL_TIMEOUT))
    settings = settings_of(artifact)
    assert settings["sampler_type"] == ImaginePrompt.defaults()["sampler_type"]
    assert settings["prompt_strength"] == ImaginePrompt.defaults()["prompt_strength"]
    assert settings["steps"] == 1  # the engine's default, from the engines file
    assert artifact.seed == settings["seed"]


def test_negative_prompt_and_cfg_scale_through_api_context(server):
    with grpc.insecure_channel(server.address) as channel:
        context = api.Context(stub=generation_pb2_grpc.GenerationServiceStub(channel), generate_engine_id="tiny")
        results = context.generate(["a cat", "blurry"], [1.0, -1.0], width=SIZE, height=SIZE, steps=1, seed=7,
                                   cfg_scale=5.0)
    (image,) = results[generation.ARTIFACT_IMAGE]
    settings = json.loads(image.info["imaginairy"])
    assert image.size == (SIZE, SIZE)
    assert settings["prompt"] == [{"text": "a cat", "weight": 1.0}]
    assert settings["negative_prompt"] == [{"text": "blurry", "weight": 1.0}]
    assert settings["prompt_strength"] == 5.0 and settings["seed"] == 7


def test_img2img(server):
    init = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    (artifact,) = image_artifacts(client(server).generate("a red wall", init_image=init, start_schedule=0.6,
                                                          width=SIZE, height=SIZE, steps=2, seed=5))
    settings = settings_of(artifact)
    assert settings["init_image"] is not None
    assert settings["init_image_strength"] == pytest.approx(0.4)


def test_inpainting_keeps_the_white_area_of_the_mask(server):
    init = Image.new("RGB", (SIZE, SIZE), (30, 160, 30))
    mask = Image.new("L", (SIZE, SIZE), 255)
    mask.paste(0, (0, 0, SIZE // 2, SIZE))  # black (left half): repaint; white (right half): keep
    answers = client(server, "tiny-inpainting").generate("a flower", init_image=init, mask_image=mask,
                                                         start_schedule=1.0, width=SIZE, height=SIZE, steps=2, seed=9)
    (artifact,) = image_artifacts(answers)
    out = np.asarray(decoded(artifact).convert("RGB"), dtype=float)
    original = np.asarray(init, dtype=float)
    kept = np.abs(out[:, SIZE // 2 + 8:] - original[:, SIZE // 2 + 8:]).mean()
    repainted = np.abs(out[:, : SIZE // 2 - 8] - original[:, : SIZE // 2 - 8]).mean()
    assert kept < repainted


def test_chain_generate_single_stage(stub):
    chain = generation.ChainRequest(request_id="chain-1", stage=[generation.Stage(id="0", request=text_request())])
    (artifact,) = image_artifacts(stub.ChainGenerate(chain, timeout=CALL_TIMEOUT))
    assert artifact.finish_reason == generation.STOP

    two_stages = generation.ChainRequest(stage=[generation.Stage(id=str(i), request=text_request()) for i in (0, 1)])
    assert rpc_error(stub.ChainGenerate(two_stages, timeout=CALL_TIMEOUT)).code() == grpc.StatusCode.UNIMPLEMENTED


def test_list_engines(server):
    with grpc.insecure_channel(server.address) as channel:
        list_engines = channel.unary_unary("/gooseai.EnginesService/ListEngines",
                                           request_serializer=engines_pb2.ListEnginesRequest.SerializeToString,
                                           response_deserializer=engines_pb2.Engines.FromString)
        engines = list_engines(engines_pb2.ListEnginesRequest(), timeout=CALL_TIMEOUT)
    by_id = {engine.id: engine for engine in engines.engine}
    assert set(by_id) == {"tiny", "tiny-inpainting", "broken"}
    assert by_id["tiny"].name == "Tiny SD 1.5" and by_id["tiny"].type == engines_pb2.PICTURE and by_id["tiny"].ready


# --- errors ------------------------------------------------------------------------------------------------------


def test_unknown_engine_is_not_found(stub):
    error = rpc_error(stub.Generate(text_request(engine="no-such-engine"), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-engine" in error.details() and "tiny" in error.details()


def _with_image(request, artifact_type, binary):
    request.prompt.append(generation.Prompt(artifact=generation.Artifact(type=artifact_type, binary=binary)))
    return request


BAD_REQUESTS = {
    "no prompt": (lambda: generation.Request(engine_id="tiny", image=generation.ImageParameters(steps=1)), "no prompt"),
    "empty text": (lambda: text_request(""), "no prompt"),
    "width not multiple of 8": (lambda: text_request(width=100), "multiple of 8"),
    "height over the limit": (lambda: text_request(height=8192), "height"),
    "steps 0": (lambda: text_request(steps=0), "steps"),
    "too many steps": (lambda: text_request(steps=151), "steps"),
    "too many samples": (lambda: text_request(samples=11), "samples"),
    "unknown sampler": (lambda: text_request(transform=generation.TransformType(diffusion=99)), "sampler"),
    "upscaler transform": (lambda: text_request(transform=generation.TransformType(upscaler=1)), "upscaler"),
    "strength over 2": (lambda: text_request(parameters=[generation.StepParameter(
        schedule=generation.ScheduleParameters(start=2.5))]), "schedule.start"),
    "cfg scale negative": (lambda: text_request(parameters=[generation.StepParameter(
        sampler=generation.SamplerParameters(cfg_scale=-1))]), "prompt_strength"),
    "more seeds than samples": (lambda: text_request(seed=[1, 2, 3], samples=2), "seeds"),
    "prompt weight 0": (lambda: generation.Request(engine_id="tiny", prompt=[generation.Prompt(
        text="x", parameters=generation.PromptParameters(weight=0))]), "weight 0"),
    "corrupt image bytes": (lambda: _with_image(text_request(), generation.ARTIFACT_IMAGE, b"\x89PNG not really"),
                            "not a readable image"),
    "mask without image": (lambda: _with_image(text_request(), generation.ARTIFACT_MASK,
                                               png_bytes(Image.new("L", (SIZE, SIZE)))), "without an init image"),
    "not an image request": (lambda: generation.Request(engine_id="tiny", prompt=[generation.Prompt(text="x")],
                                                        classifier=generation.ClassifierParameters()),
                             "Only image generation"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_invalid_argument(stub, case):
    make_request, expected = BAD_REQUESTS[case]
    error = rpc_error(stub.Generate(make_request(), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details()


def test_a_failing_request_does_not_affect_the_next(stub):
    error = rpc_error(stub.Generate(text_request(engine="broken"), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "broken" in error.details()
    assert len(image_artifacts(stub.Generate(text_request(), timeout=CALL_TIMEOUT))) == 1


# --- auth --------------------------------------------------------------------------------------------------------


def test_auth(make_server):
    secured = make_server(access_token=TOKEN)
    with grpc.insecure_channel(secured.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            # refused before any work: an unknown engine is not even looked up
            error = rpc_error(stub.Generate(text_request(engine="nope"), metadata=metadata, timeout=CALL_TIMEOUT))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED

        accepted = [("authorization", f"Bearer {TOKEN}")]
        error = rpc_error(stub.Generate(text_request(engine="nope"), metadata=accepted, timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert len(image_artifacts(stub.Generate(text_request(), metadata=accepted, timeout=CALL_TIMEOUT))) == 1

    # StabilityInference drops its key on a plain-text channel, so it is refused here
    error = rpc_error(client(secured).generate("a cat", width=SIZE, height=SIZE, steps=1))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- queue, cancellation, load -----------------------------------------------------------------------------------


def test_cancellation_frees_the_device_within_a_step(server, stub):
    call = long_call(stub)
    wait_for(lambda: server.queue.stats()["running"] == 1)
    first = next(call)
    assert not first.artifacts  # a keep-alive answer while generating
    call.cancel()
    seconds = wait_for(lambda: server.queue.stats() == {"running": 0, "waiting": 0}, timeout=10)
    assert seconds < 5
    assert len(image_artifacts(stub.Generate(text_request(), timeout=CALL_TIMEOUT))) == 1


def test_full_queue_and_disconnect_while_queued(make_server):
    small = make_server(max_queue=1)
    with grpc.insecure_channel(small.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        running = long_call(stub)
        wait_for(lambda: small.queue.stats()["running"] == 1)
        queued = long_call(stub)
        wait_for(lambda: small.queue.stats()["waiting"] == 1)

        start = time.monotonic()
        error = rpc_error(stub.Generate(text_request(), timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - start < 2

        queued.cancel()  # the client goes away while waiting: its place is freed
        wait_for(lambda: small.queue.stats()["waiting"] == 0, timeout=5)
        behind = long_call(stub)
        wait_for(lambda: small.queue.stats()["waiting"] == 1)

        small.stop(grace=0.5)  # shutdown: the waiting and the running call end at once
        assert rpc_error(behind).code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert rpc_error(running).code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def test_load_many_clients_answered_in_arrival_order(server):
    """8 clients x 2 requests at once: all answered, without errors, first come first served, memory flat.

    Order is checked on the server's own clock, sent back in every Answer: `received` (when the call arrived) and
    `created` (when its image was made); a request that arrived earlier never gets its image later.
    """
    import psutil

    clients, rounds = 8, 2
    results = []  # (received, created, seed asked, seed got)
    errors = []

    def one_client(number):
        with grpc.insecure_channel(server.address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            for round_number in range(rounds):
                seed = 100 * number + round_number + 1
                try:
                    answers = list(stub.Generate(text_request(seed=[seed]), timeout=CALL_TIMEOUT))
                except grpc.RpcError as e:
                    errors.append(e)
                    return
                (answer,) = [answer for answer in answers if answer.artifacts]
                results.append((answer.received, answer.created, seed, answer.artifacts[0].seed))

    rss_before = psutil.Process().memory_info().rss
    threads = [threading.Thread(target=one_client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT)
    assert not errors
    assert len(results) == clients * rounds
    assert all(asked == got for _, _, asked, got in results)
    for received_a, created_a, _, _ in results:
        for received_b, created_b, _, _ in results:
            if received_a < received_b:
                assert created_a <= created_b
    assert psutil.Process().memory_info().rss - rss_before < 200 * 2**20
