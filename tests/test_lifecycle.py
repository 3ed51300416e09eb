"""Startup, readiness, shutdown and memory of a real server process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import details, transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing.launcher import RunningServer, start_server

SERVICE = "parakeet.v1.TranscriptionService"


def _health(server: RunningServer, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(response.status)


def test_health_is_not_serving_until_the_model_is_loaded_and_warm(
    tdt_checkpoint: Path, tmp_path: Path, speech_wav: bytes
) -> None:
    # config.json as a named pipe: loading blocks until the test writes it, so the
    # server is observably up but not ready, with no sleeps and no test hooks.
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(tdt_checkpoint / "model.safetensors", model / "model.safetensors")
    os.mkfifo(model / "config.json")
    server = start_server(model, tmp_path, wait="listening")
    try:
        assert _health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(server, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = server.stub()
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert not info.warm
        with pytest.raises(grpc.RpcError) as raised:
            transcribe(stub, speech_wav)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in details(raised.value)

        (model / "config.json").write_bytes((tdt_checkpoint / "config.json").read_bytes())
        server.wait_for(re.compile(r"SERVING address="))
        assert _health(server) == health_pb2.HealthCheckResponse.SERVING
        assert _health(server, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).warm
        assert transcribe(stub, speech_wav).transcript.segments
        log = server.log()
        assert log.index("listening") < log.index("model loaded") < log.index("SERVING address=")
        assert "blas=" in log
        assert "rss=" in log
        assert "load=" in log
    finally:
        assert server.stop() == 0


def test_sigterm_lets_an_in_flight_request_finish_then_exits_zero(
    tdt_checkpoint: Path, tmp_path: Path
) -> None:
    server = start_server(tdt_checkpoint, tmp_path, "--log-level", "debug")
    long_audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 240).astype("<f4").tobytes()
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["response"] = transcribe(
                server.stub(),
                long_audio,
                encoding=pb.AudioFormat.ENCODING_FLOAT32,
                sample_rate=16000,
            )
        except grpc.RpcError as error:
            result["error"] = error

    caller = threading.Thread(target=call)
    caller.start()
    server.wait_for(re.compile(r"rpc=Transcribe received"))
    server.process.send_signal(signal.SIGTERM)
    caller.join(120)
    assert server.process.wait(60) == 0, server.log()
    assert "response" in result, result.get("error")
    response = result["response"]
    assert isinstance(response, pb.TranscribeResponse)
    assert response.metrics.audio_seconds == pytest.approx(240)
    log = server.log()
    assert log.index("shutting down") < log.index("PERF audio=240.00s") < log.index("stopped")


def test_missing_model_directory_is_one_clear_error(tmp_path: Path) -> None:
    server = start_server(tmp_path / "no-such-model", tmp_path, wait="none")
    code = server.process.wait(60)
    log = server.log()
    assert code == 2, log
    assert "does not exist" in log
    assert "Traceback" not in log


def test_directory_without_weights_is_one_clear_error(tdt_checkpoint: Path, tmp_path: Path) -> None:
    model = tmp_path / "half"
    model.mkdir()
    shutil.copy(tdt_checkpoint / "config.json", model)
    server = start_server(model, tmp_path, wait="none")
    assert server.process.wait(60) == 2
    assert "lacks model.safetensors" in server.log()
    assert "Traceback" not in server.log()


def test_unreachable_hub_model_is_one_clear_error(tmp_path: Path) -> None:
    server = start_server("mlx-community/parakeet-tdt-0.6b-v3", tmp_path, wait="none")
    assert server.process.wait(120) == 2
    log = server.log()
    assert "could not load model 'mlx-community/parakeet-tdt-0.6b-v3'" in log
    assert "Hugging Face" in log
    assert "LocalEntryNotFoundError" in log  # the hub's error, not the local-path fallback's
    assert "FileNotFoundError" not in log
    assert "Traceback" not in log


def test_bad_flag_value_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "parakeet_server", "--port", "not-a-port"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_memory_stays_flat_over_200_requests(tdt_checkpoint: Path, tmp_path: Path) -> None:
    # Caches off: their memory is bounded by their own flags; this is about the model's.
    server = start_server(
        tdt_checkpoint, tmp_path, "--audio-cache-bytes", "0", "--transcript-cache-bytes", "0"
    )
    try:
        stub = server.stub()
        rng = np.random.default_rng(2)
        # Varying lengths: MLX's buffer cache and glibc's heaps would otherwise keep the
        # buffers of the longest requests for the life of the process.
        clips = [
            rng.normal(0, 0.1, int(16000 * seconds)).astype("<f4").tobytes()
            for seconds in (0.5, 8.0, 1.0, 20.0, 3.0)
        ]

        def run(count: int) -> None:
            for index in range(count):
                transcribe(
                    stub,
                    clips[index % len(clips)],
                    encoding=pb.AudioFormat.ENCODING_FLOAT32,
                    sample_rate=16000,
                )

        run(25)  # allocator and gRPC buffers settle
        before = server.rss_bytes()
        run(200)
        after = server.rss_bytes()
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert info.mlx_cache_memory_bytes == 0  # released after every request
        assert info.mlx_active_memory_bytes < 10e6  # the tiny model's weights, nothing more
        assert info.resident_memory_bytes + info.worker_resident_memory_bytes == pytest.approx(
            after, rel=0.05
        )
        growth_mb = (after - before) / 1e6
        assert growth_mb < 15, f"RSS grew {growth_mb:.1f} MB over 200 requests"
    finally:
        assert server.stop() == 0


def test_sigint_drains_a_stream_refuses_new_calls_and_leaves_nothing_behind(
    tdt_checkpoint: Path, tmp_path: Path
) -> None:
    cache, scratch = tmp_path / "cache", tmp_path / "tmp"
    scratch.mkdir()
    server = start_server(
        tdt_checkpoint,
        tmp_path,
        "--cache-dir",
        str(cache),
        env={"TMPDIR": str(scratch)},
    )
    worker = server.stub().GetServerInfo(pb.GetServerInfoRequest(), timeout=10).worker_pid
    pcm = np.random.default_rng(5).normal(0, 3000, 16000 * 3).astype("<i2").tobytes()
    interrupted = threading.Event()
    config = pb.StreamingConfig(
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000),
        finalization_mode=pb.FINALIZATION_MODE_STREAMING,
    )

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(config=config)
        yield pb.StreamingTranscribeRequest(audio=pcm[: len(pcm) // 2])
        interrupted.wait(30)
        yield pb.StreamingTranscribeRequest(audio=pcm[len(pcm) // 2 :])

    stub = server.stub()
    outcome: list[object] = []
    streamer = threading.Thread(
        target=lambda: outcome.append(list(stub.StreamingTranscribe(requests(), timeout=60)))
    )
    streamer.start()
    # A request that writes the disk cache, and the stream surely open at the server.
    transcribe(stub, pcm, encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate=16000)
    _wait_for_active_stream(server)
    server.process.send_signal(signal.SIGINT)
    server.wait_for(re.compile(r"shutting down"))
    try:
        # Refused by the server with a reason, on the stream's own connection and on a new one
        # (gRPC alone would cancel the first: CANCELLED, which clients do not retry).
        for caller in (stub, server.stub()):
            with pytest.raises(grpc.RpcError) as refused:
                transcribe(
                    caller, pcm, encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate=16000
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (refused.value.details() or "")
        health = health_pb2_grpc.HealthStub(server.channel())
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        interrupted.set()  # the stream ends even when an assertion above failed
    streamer.join(60)
    assert server.process.wait(60) == 0, server.log()
    responses = outcome[0]
    assert isinstance(responses, list)
    assert responses[-1].is_final  # the open stream got its final result
    assert not Path(f"/proc/{worker}").exists()
    # MLX's CPU backend keeps the kernels it compiles in $TMPDIR/mlx for the next process: a
    # cache by design, not a temporary file.
    assert [p.name for p in scratch.iterdir() if p.name != "mlx"] == []
    assert not [p for p in cache.rglob(".tmp-*")]  # the disk cache's half-written files


def test_a_stream_still_open_when_the_grace_is_over_is_cut_and_the_server_exits(
    tdt_checkpoint: Path, tmp_path: Path
) -> None:
    server = start_server(tdt_checkpoint, tmp_path, "--shutdown-grace-seconds", "1")
    release = threading.Event()
    config = pb.StreamingConfig(
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000)
    )

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(config=config)
        yield pb.StreamingTranscribeRequest(audio=bytes(32000))
        release.wait(60)  # a client that keeps its stream open and silent

    outcome: list[object] = []

    def run_stream() -> None:
        try:
            outcome.append(list(server.stub().StreamingTranscribe(requests(), timeout=60)))
        except grpc.RpcError as error:
            outcome.append(error)

    streamer = threading.Thread(target=run_stream)
    streamer.start()
    try:
        _wait_for_active_stream(server)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.log()
        assert time.monotonic() - signalled < 10  # 1 s of grace, then the worker is closed
        streamer.join(30)
    finally:
        release.set()
    error = outcome[0]
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutdown grace over after 1.0s; cancelling calls still running: 1" in server.log()


def _wait_for_active_stream(server: RunningServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    stub = server.stub()
    while time.monotonic() < deadline:
        if stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).active_streams:
            return
        time.sleep(0.05)
    raise AssertionError("the stream never opened")
