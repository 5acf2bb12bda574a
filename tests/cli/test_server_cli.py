"""`aimg server` as a process: starts, serves, and on SIGINT/SIGTERM shuts down cleanly, releasing its port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from click.testing import CliRunner
from server_helpers import CALL_TIMEOUT
from stability_sdk.interfaces.gooseai.engines import engines_pb2

from imaginairy.cli.server import server_cmd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def list_engines(address: str, timeout: float) -> engines_pb2.Engines:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        call = channel.unary_unary("/gooseai.EnginesService/ListEngines",
                                   request_serializer=engines_pb2.ListEnginesRequest.SerializeToString,
                                   response_deserializer=engines_pb2.Engines.FromString)
        return call(engines_pb2.ListEnginesRequest(), timeout=timeout)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_process_stops_cleanly_on_signal(engines_file, signum):
    port = free_port()
    command = [sys.executable, "-c", "from imaginairy.cli.server import server_cmd; server_cmd()",
               "--port", str(port), "--engines-config", str(engines_file), "--log-level", "WARNING"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": REPO})
    try:
        engines = list_engines(f"127.0.0.1:{port}", START_TIMEOUT)
        assert "tiny" in {engine.id for engine in engines.engine}
        process.send_signal(signum)
        assert process.wait(timeout=CALL_TIMEOUT) == 0, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", port))


def test_help_and_options():
    result = CliRunner().invoke(server_cmd, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--engines-config", "--access-token", "IMAGINAIRY_SERVER_TOKEN",
                   "--max-queue", "--vram-mode", "--device"):
        assert option in result.output


def test_bad_engines_file_is_a_usage_error(tmp_path):
    engines = tmp_path / "engines.yaml"
    engines.write_text("my-engine: {steps: 3}\n")
    result = CliRunner().invoke(server_cmd, ["--port", "0", "--engines-config", str(engines)])
    assert result.exit_code == 2
    assert "my-engine" in result.output and "model" in result.output


def test_port_in_use_is_reported(engines_file):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        result = CliRunner().invoke(server_cmd, ["--port", str(port), "--engines-config", str(engines_file)])
    assert result.exit_code == 2 and "Cannot listen" in result.output
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("arguments", [["--access-token", ""], ["--http-port", "0", "--api-auth", "nopassword"],
                                       ["--no-grpc"]])
def test_refuses_to_start_open_by_mistake(engines_file, arguments):
    result = CliRunner().invoke(server_cmd, ["--port", "0", "--engines-config", str(engines_file), *arguments])
    assert result.exit_code == 2
    assert ("empty" in result.output or "user:password" in result.output or "Nothing to serve" in result.output)
