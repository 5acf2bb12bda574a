"""What a probe of the gRPC server found, each fixed: stalled readers, huge prompts, client strings in the log,
unserved request fields, the seed after 4294967295, and the status a shutdown reports."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from server_helpers import CALL_TIMEOUT, StallingProxy, image_artifacts, settings_of, text_request, wait_for
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc
from test_server import long_call, rpc_error

from imaginairy.server import protocol
from imaginairy.server.limits import MAX_PROMPT_CHARS

SEND_TIMEOUT = 2.0


@pytest.mark.parametrize("send_timeout", [SEND_TIMEOUT])
def test_clients_that_stop_reading_do_not_lock_others_out(make_server, send_timeout):
    """Clients whose answers are generated but never read (through a proxy that stops passing the server's bytes on)
    must not keep the server's call slots: after the send timeout a new client is served.

    With grpcio 1.63 here the send of a finished answer completes into gRPC's own buffers, so this passes with the
    send timeout off as well; it guards the behaviour, and test_a_send_not_taken_in_time_cancels_the_call checks
    the timeout itself."""
    server = make_server(max_queue=0, send_timeout_seconds=send_timeout)
    slots = server.queue.max_waiting + 1 + 4  # the server's call slots (handler threads)
    proxies, channels, calls = [], [], []
    for _ in range(slots):
        proxy = StallingProxy(("127.0.0.1", server.port))
        channel = grpc.insecure_channel(proxy.address)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        proxy.stall()
        # a PNG of 256x256 noise (~200 kB), beyond the flow-control window the client opened
        calls.append(generation_pb2_grpc.GenerationServiceStub(channel).Generate(
            text_request(width=256, height=256, seed=[1]), timeout=CALL_TIMEOUT))
        wait_for(lambda: server.queue.stats()["running"] == 1, timeout=CALL_TIMEOUT)
        wait_for(lambda: server.queue.stats()["running"] == 0, timeout=CALL_TIMEOUT)
        time.sleep(0.5)
        proxies.append(proxy)
        channels.append(channel)
    time.sleep(SEND_TIMEOUT + 1)  # past the fixed server's send timeout: the stalled calls are cancelled
    with grpc.insecure_channel(server.address) as channel:
        # unfixed, this call is refused with RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded"), the queue idle
        answers = list(generation_pb2_grpc.GenerationServiceStub(channel).Generate(text_request(), timeout=20))
    assert len(image_artifacts(answers)) == 1
    for proxy, channel in zip(proxies, channels):
        channel.close()
        proxy.close()


def test_a_send_not_taken_in_time_cancels_the_call():
    from imaginairy.server.service import GenerationService, ServiceSettings

    class Context:
        cancelled = 0

        def cancel(self):
            self.cancelled += 1

    context = Context()
    service = GenerationService({}, None, ServiceSettings(send_timeout_seconds=0.2))
    answers = service._sent_in_time(iter(["first", "second"]), context)
    assert next(answers) == "first"
    time.sleep(0.1)  # taken in time: the watchdog of the first answer is stopped
    assert next(answers) == "second"
    time.sleep(0.5)  # not taken: the call is cancelled, once
    assert context.cancelled == 1
    assert list(answers) == []


def test_a_huge_prompt_is_refused_before_any_work(server, stub):
    start = time.monotonic()
    error = rpc_error(stub.Generate(text_request("x" * 1_000_000), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and str(MAX_PROMPT_CHARS) in error.details()
    assert time.monotonic() - start < 2 and server.queue.stats() == {"running": 0, "waiting": 0}
    (artifact,) = image_artifacts(stub.Generate(text_request("y" * MAX_PROMPT_CHARS), timeout=CALL_TIMEOUT))
    assert settings_of(artifact)["prompt"][0]["text"] == "y" * MAX_PROMPT_CHARS


def test_answer_size_is_checked_before_generating():
    protocol.check_answer_fits(2048, 2048, MAX_PROMPT_CHARS)  # the largest request fits in one message
    with pytest.raises(protocol.BadRequest, match="may not fit"):
        protocol.check_answer_fits(512, 512, 100, budget=700_000)
    protocol.check_answer_fits(256, 256, 100, budget=700_000)


def test_client_strings_are_logged_quoted_and_truncated(stub, caplog):
    forged = "abc\n2026-01-01 INFO everything is fine"
    with caplog.at_level(logging.INFO, logger="imaginairy.server"):
        request = text_request()
        request.request_id = forged
        list(stub.Generate(request, timeout=CALL_TIMEOUT))
        request.request_id = "z" * 1_000_000  # echoed in every answer: within the client's 4 MB message limit
        list(stub.Generate(request, timeout=CALL_TIMEOUT))
        rpc_error(stub.Generate(text_request(engine="e\nvil" * 1000), timeout=CALL_TIMEOUT))
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("imaginairy.server")]
    assert any("abc\\n2026" in message for message in messages)  # the newline escaped, not a new log line
    assert all("\n" not in message for message in messages)
    assert max(len(message) for message in messages) < 400
    assert any("(1000000 chars)" in message for message in messages)


def _step(**fields):
    return text_request(parameters=[generation.StepParameter(**fields)])


def _with(request, **fields):
    for name, value in fields.items():
        getattr(request, name).CopyFrom(value)
    return request


UNSERVED = {
    "clip guidance": (lambda: _step(guidance=generation.GuidanceParameters(
        guidance_preset=generation.GUIDANCE_PRESET_SIMPLE)), "image.parameters.guidance"),
    "adapter": (lambda: text_request(adapter=generation.T2IAdapterParameter(
        adapter_type=generation.T2IADAPTER_CANNY)), "image.adapter.adapter_type"),
    "fine tuning": (lambda: text_request(fine_tuning_parameters=[generation.FineTuningParameters(model_id="m")]),
                    "image.fine_tuning_parameters"),
    "style preset": (lambda: _style_preset(), "extras.fields"),
    "schedule end": (lambda: _step(schedule=generation.ScheduleParameters(end=0.5)), "schedule.end"),
    "second step": (lambda: text_request(parameters=[generation.StepParameter(), generation.StepParameter()]),
                    "2 step parameters"),
    "sampling steps": (lambda: _step(sampler=generation.SamplerParameters(sampling_steps=20)),
                       "image.parameters.sampler.sampling_steps"),
    "init noise scale": (lambda: _step(sampler=generation.SamplerParameters(init_noise_scale=0.5)),
                         "init_noise_scale"),
    "quantize": (lambda: text_request(quantize=True), "image.quantize"),
    "weight method": (lambda: text_request(weight_method=generation.CROSS_ATTENTION), "image.weight_method"),
    "conditioner": (lambda: _with(text_request(), conditioner=generation.ConditionerParameters(
        vector_adjust_prior="x")), "conditioner"),
    "prompt init flag": (lambda: generation.Request(engine_id="tiny", prompt=[generation.Prompt(
        text="x", parameters=generation.PromptParameters(init=True))]), "prompt.parameters.init"),
}


def _style_preset():
    request = text_request()
    request.extras.update({"$IPC": {"preset": "anime"}})
    return request


@pytest.mark.parametrize("case", list(UNSERVED))
def test_unserved_request_fields_are_invalid_argument_naming_the_field(stub, case):
    make_request, named = UNSERVED[case]
    error = rpc_error(stub.Generate(make_request(), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()


def test_the_seed_after_4294967295_is_1_not_random(stub):
    artifacts = image_artifacts(stub.Generate(text_request(seed=[4294967295], samples=2), timeout=CALL_TIMEOUT))
    assert [artifact.seed for artifact in artifacts] == [4294967295, 1]
    assert settings_of(artifacts[1])["seed"] == 1


def test_shutdown_is_unavailable_for_the_running_call(make_server):
    server = make_server(max_queue=1)
    with grpc.insecure_channel(server.address) as channel:
        running = long_call(generation_pb2_grpc.GenerationServiceStub(channel))
        wait_for(lambda: server.queue.stats()["running"] == 1)
        server.stop(grace=2)
        error = rpc_error(running)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
