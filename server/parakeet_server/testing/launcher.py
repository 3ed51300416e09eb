"""One way to start a real parakeet-server for tests, benchmarks and tools.

The server is a subprocess on a free loopback port (`--port 0`); it writes the port it bound to
`--port-file`, and it is ready when its gRPC health service says SERVING, which is what clients
and load balancers go by too. No log line is parsed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.ops.proc import child_pids, resident_bytes

# Large enough for any audio the tests and benches send.
MESSAGE_BYTES = 256 * 1024 * 1024


class ServerFailed(AssertionError):
    """The server exited or did not become ready in time; the message has its log."""


@dataclass
class RunningServer:
    """A parakeet-server process, its log file and the channels opened to it."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path
    port: int = 0
    credentials: grpc.ChannelCredentials | None = None  # for a TLS server's health checks
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        """A plaintext channel, closed by stop()."""
        channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MESSAGE_BYTES),
            ],
        )
        self.channels.append(channel)
        return channel

    def stub(self) -> pb_grpc.TranscriptionServiceStub:
        return pb_grpc.TranscriptionServiceStub(self.channel())

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 120.0) -> re.Match[str]:
        """The first match of `pattern` in the log, once it appears (for tests of the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log())
            if match:
                return match
            self._check_running()
            time.sleep(0.05)
        raise ServerFailed(
            f"server did not log {pattern.pattern!r} in {timeout:g} s:\n{self.log()}"
        )

    def wait_listening(self, timeout: float = 120.0) -> int:
        """The port, once the server has bound it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.port_file.read_text() if self.port_file.exists() else ""
            if text.endswith("\n"):
                self.port = int(text)
                return self.port
            self._check_running()
            time.sleep(0.05)
        raise ServerFailed(f"the server did not listen within {timeout:g} s:\n{self.log()}")

    def wait_serving(self, timeout: float = 120.0) -> None:
        """Returns once health says SERVING (the model is loaded and warm)."""
        deadline = time.monotonic() + timeout
        port = self.wait_listening(timeout)
        target = f"127.0.0.1:{port}"
        channel = (
            grpc.secure_channel(target, self.credentials)
            if self.credentials is not None
            else grpc.insecure_channel(target)
        )
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not accepting calls yet
                self._check_running()
                time.sleep(0.05)
        raise ServerFailed(f"the server was not SERVING within {timeout:g} s:\n{self.log()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server and its model process together."""
        return resident_bytes(self.process.pid) + self.worker_rss_bytes()

    def worker_rss_bytes(self) -> int:
        """Resident memory of the server's model process alone."""
        return sum(resident_bytes(pid) for pid in self.children())

    def children(self) -> list[int]:
        """Process ids of the server's child processes (its model process)."""
        return child_pids(self.process.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code; kills it (and raises) if it ignores the signal."""
        for channel in self.channels:
            channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise ServerFailed(
                    f"server ignored SIGTERM for {timeout:g} s:\n{self.log()}"
                ) from None
        return self.process.returncode

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise ServerFailed(f"server exited with {self.process.returncode}:\n{self.log()}")


def start_server(
    model: Path | str,
    log_dir: Path,
    *extra: str,
    wait: str = "serving",
    env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    timeout: float = 120.0,
    log_path: Path | None = None,
) -> RunningServer:
    """Starts `python -m parakeet_server --model MODEL EXTRA...` on a free loopback port.

    wait="serving" returns once health says SERVING, "listening" once the port is bound, and
    "none" right away (port unknown). Output goes to `log_path`, by default a new file in
    `log_dir`.
    """
    if log_path is None:
        log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    port_file = log_path.with_suffix(".port")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parakeet_server",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *extra,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1", **(env or {})},
        )
    server = RunningServer(process, log_path, port_file, credentials=credentials)
    try:
        if wait == "serving":
            server.wait_serving(timeout)
        elif wait == "listening":
            server.wait_listening(timeout)
    except ServerFailed:
        server.stop()
        raise
    return server
