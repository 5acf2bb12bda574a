"""16 HTTP and 8 gRPC clients at once on one queue: every request answered, or refused with a clear 429/503 /
RESOURCE_EXHAUSTED; none lost, none hanging."""

from __future__ import annotations

import threading

import grpc
import httpx
from server_helpers import CALL_TIMEOUT, SIZE, image_artifacts, text_request
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc

HTTP_CLIENTS, GRPC_CLIENTS, ROUNDS = 16, 8, 2


def test_http_and_grpc_clients_share_the_queue(http_api):
    import psutil

    outcomes = []  # (protocol, "ok" | "refused", seed asked, seed got)
    unexpected = []
    lock = threading.Lock()

    def http_client(number):
        with httpx.Client(base_url=f"http://127.0.0.1:{http_api.http_port}", timeout=CALL_TIMEOUT) as http:
            for round_number in range(ROUNDS):
                seed = 1000 + 10 * number + round_number
                try:
                    answer = http.post("/sdapi/v1/txt2img", json={"prompt": "load", "seed": seed, "steps": 1,
                                                                  "width": SIZE, "height": SIZE})
                except httpx.HTTPError as e:
                    with lock:
                        unexpected.append(("http", repr(e)))
                    continue
                with lock:
                    if answer.status_code == 200:
                        import json

                        outcomes.append(("http", "ok", seed, json.loads(answer.json()["info"])["seed"]))
                    elif answer.status_code in (429, 503) and answer.json()["detail"]:
                        outcomes.append(("http", "refused", seed, None))
                    else:
                        unexpected.append(("http", answer.status_code, answer.text[:200]))

    def grpc_client(number):
        with grpc.insecure_channel(http_api.address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            for round_number in range(ROUNDS):
                seed = 5000 + 10 * number + round_number
                try:
                    (artifact,) = image_artifacts(stub.Generate(text_request(seed=[seed]), timeout=CALL_TIMEOUT))
                    with lock:
                        outcomes.append(("grpc", "ok", seed, artifact.seed))
                except grpc.RpcError as e:
                    with lock:
                        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            outcomes.append(("grpc", "refused", seed, None))
                        else:
                            unexpected.append(("grpc", e.code(), e.details()))

    rss_before = psutil.Process().memory_info().rss
    threads = [threading.Thread(target=http_client, args=(n,)) for n in range(HTTP_CLIENTS)]
    threads += [threading.Thread(target=grpc_client, args=(n,)) for n in range(GRPC_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT * ROUNDS)
    assert not any(thread.is_alive() for thread in threads), "a client is still waiting"
    assert not unexpected
    assert len(outcomes) == (HTTP_CLIENTS + GRPC_CLIENTS) * ROUNDS  # none lost
    served = [outcome for outcome in outcomes if outcome[1] == "ok"]
    assert all(asked == got for _, _, asked, got in served)
    assert {protocol for protocol, *_ in served} == {"http", "grpc"}
    # the queue holds 16 waiting + 1 running: at least that many are served at once, the rest refused, not lost
    assert len(served) >= 17
    assert http_api.queue.stats() == {"running": 0, "waiting": 0}
    assert psutil.Process().memory_info().rss - rss_before < 300 * 2**20
