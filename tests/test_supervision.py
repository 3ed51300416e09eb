"""The model worker process: killed mid-request and mid-stream, restarted, recycled, reaped."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing.launcher import RunningServer, start_server
from parakeet_server.workers.remote import describe_exit

SERVING = health_pb2.HealthCheckResponse.SERVING


def _info(server: RunningServer) -> pb.GetServerInfoResponse:
    info: pb.GetServerInfoResponse = server.stub().GetServerInfo(
        pb.GetServerInfoRequest(), timeout=10
    )
    return info


def _health(server: RunningServer) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def _wait_for_new_worker(server: RunningServer, old_pid: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _info(server)
        if info.worker_pid not in (0, old_pid) and _health(server) == SERVING:
            return info.worker_pid
        time.sleep(0.1)
    raise AssertionError(f"no new worker within {timeout}s:\n{server.log()}")


def _noise(seconds: float, seed: int = 0) -> bytes:
    samples = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds))
    return samples.astype("<f4").tobytes()


def _raw(server: RunningServer, audio: bytes, timeout: float = 120) -> pb.TranscribeResponse:
    request = pb.TranscribeRequest(
        audio=audio,
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_FLOAT32, sample_rate_hertz=16000),
    )
    response: pb.TranscribeResponse = server.stub().Transcribe(request, timeout=timeout)
    return response


@pytest.fixture
def crashy(tdt_checkpoint: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own (its worker gets killed), cutting audio into 5 s chunks."""
    running = start_server(
        tdt_checkpoint,
        tmp_path,
        "--chunk-seconds",
        "5",
        "--chunk-overlap-seconds",
        "1",
        "--transcript-cache-bytes",
        "0",
        "--max-message-bytes",
        "100000000",
    )
    yield running
    assert running.stop() == 0, running.log()


def test_the_model_runs_in_a_worker_process(crashy: RunningServer) -> None:
    info = _info(crashy)
    assert info.worker_pid in crashy.children()
    assert info.worker_pid != crashy.process.pid
    assert info.worker_resident_memory_bytes > 0
    assert info.worker_restarts == 0
    assert re.search(rf"model worker ready pid={info.worker_pid} ", crashy.log())


def test_a_killed_worker_is_restarted_and_answers_the_same(crashy: RunningServer) -> None:
    audio = _noise(3)
    before = _raw(crashy, audio)
    old = _info(crashy).worker_pid
    os.kill(old, signal.SIGKILL)
    new = _wait_for_new_worker(crashy, old)
    after = _raw(crashy, audio)
    assert after.transcript == before.transcript
    info = _info(crashy)
    assert info.worker_restarts == 1
    assert info.worker_pid == new
    log = crashy.log()
    assert f"model worker pid={old} was killed by SIGKILL" in log
    assert "model worker restarted" in log
    assert "Traceback" not in log


def test_the_exit_is_named_while_another_thread_is_reaping_the_worker() -> None:
    """The race behind a red CI run: the watcher reaps the dead worker while the worker's
    thread, whose call read EOF, asks how it ended; between the watcher's waitpid and its
    storing the code, the asker found none and said "stopped answering"."""
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    process.start()
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    _, status = os.waitpid(process.pid, 0)  # the watcher reaps it ...
    # ... and stores the code a moment later, as multiprocessing's Popen.poll does.
    code = os.waitstatus_to_exitcode(status)
    # _popen is private to multiprocessing and untyped; the test plays its Popen.poll.
    popen = process._popen  # type: ignore[attr-defined]
    threading.Timer(0.1, setattr, (popen, "returncode", code)).start()
    assert describe_exit(process) == "was killed by SIGKILL"


def test_a_request_in_flight_fails_fast_with_unavailable(crashy: RunningServer) -> None:
    old = _info(crashy).worker_pid
    request = pb.TranscribeLongRequest(
        audio=_noise(600, seed=1),
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_FLOAT32, sample_rate_hertz=16000),
    )
    call = crashy.stub().TranscribeLong(request, timeout=120)
    responses = iter(call)
    next(responses)  # the total
    assert next(responses).audio_processed_seconds > 0  # the worker is on it
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        for _ in responses:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert "model worker process" in details
    assert "killed by SIGKILL" in details
    assert time.monotonic() - killed_at < 10
    _wait_for_new_worker(crashy, old)
    assert _raw(crashy, _noise(2)).metrics.audio_seconds == 2


def test_a_stream_in_flight_ends_with_unavailable(crashy: RunningServer) -> None:
    old = _info(crashy).worker_pid
    stop = threading.Event()
    config = pb.StreamingConfig(
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000),
        interim_results=True,
        finalization_mode=pb.FINALIZATION_MODE_STREAMING,
    )
    chunk = (np.random.default_rng(2).normal(0, 3000, 1600)).astype("<i2").tobytes()

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(config=config)
        while not stop.is_set():
            yield pb.StreamingTranscribeRequest(audio=chunk)
            time.sleep(0.05)

    call = crashy.stub().StreamingTranscribe(requests(), timeout=120)
    responses = iter(call)
    next(responses)  # a partial: the worker holds this stream's state
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            for _ in responses:
                pass
    finally:
        stop.set()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "model worker process" in (caught.value.details() or "")
    assert time.monotonic() - killed_at < 10
    _wait_for_new_worker(crashy, old)


def test_recycling_replaces_the_worker_without_failing_a_request(
    tdt_checkpoint: Path, tmp_path: Path, speech_wav: bytes
) -> None:
    server = start_server(
        tdt_checkpoint,
        tmp_path,
        "--worker-max-requests",
        "4",
        "--transcript-cache-bytes",
        "0",
    )
    try:
        stub = server.stub()
        first = _info(server).worker_pid
        # A stream opened on the first worker outlives its replacement.
        pcm = np.random.default_rng(3).normal(0, 3000, 16000 * 4).astype("<i2").tobytes()
        config = pb.StreamingConfig(
            format=pb.AudioFormat(
                encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000
            ),
            finalization_mode=pb.FINALIZATION_MODE_STREAMING,
        )
        release = threading.Event()

        def requests() -> Iterator[pb.StreamingTranscribeRequest]:
            yield pb.StreamingTranscribeRequest(config=config)
            yield pb.StreamingTranscribeRequest(audio=pcm[: len(pcm) // 2])
            release.wait(60)
            yield pb.StreamingTranscribeRequest(audio=pcm[len(pcm) // 2 :])

        stream_result: list[object] = []
        streamer = threading.Thread(
            target=lambda: stream_result.append(
                _capture(lambda: list(stub.StreamingTranscribe(requests(), timeout=120)))
            )
        )
        streamer.start()
        results = [transcribe(stub, speech_wav) for _ in range(10)]
        _wait_until(lambda: _info(server).worker_pid != first, timeout=60)
        assert first in server.children()  # still serving the open stream
        release.set()
        streamer.join(60)
        responses = stream_result[0]
        assert isinstance(responses, list), responses
        assert responses[-1].is_final
        assert len({r.transcript.SerializeToString() for r in results}) == 1
        info = _info(server)
        assert info.worker_recycles >= 1
        assert info.worker_restarts == 0
        # Drained, then closed once the stream ended.
        _wait_until(lambda: first not in server.children(), timeout=30)
        assert "model worker recycled" in server.log()
    finally:
        assert server.stop() == 0


def test_sigterm_leaves_no_worker_behind(tdt_checkpoint: Path, tmp_path: Path) -> None:
    server = start_server(tdt_checkpoint, tmp_path)
    worker = _info(server).worker_pid
    assert server.stop() == 0
    assert not Path(f"/proc/{worker}").exists()


def test_a_killed_server_takes_its_worker_with_it(tdt_checkpoint: Path, tmp_path: Path) -> None:
    server = start_server(tdt_checkpoint, tmp_path)
    worker = _info(server).worker_pid
    server.process.kill()
    server.process.wait()
    _wait_until(lambda: not Path(f"/proc/{worker}").exists(), timeout=10)


def _capture(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error


def _wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_worker_over_its_memory_limit_is_replaced(tdt_checkpoint: Path, tmp_path: Path) -> None:
    # Any loaded model is over 1 MB: the worker is replaced after its first request.
    server = start_server(
        tdt_checkpoint, tmp_path, "--worker-max-memory-mb", "1", "--transcript-cache-bytes", "0"
    )
    try:
        first = _info(server).worker_pid
        audio = _noise(2, seed=4)
        answers = [_raw(server, audio) for _ in range(3)]
        _wait_until(lambda: _info(server).worker_recycles >= 1, timeout=60)
        assert _info(server).worker_pid != first
        assert len({a.transcript.SerializeToString() for a in answers}) == 1
        assert re.search(r"model worker pid=\d+ is being recycled at \d+ MB resident", server.log())
    finally:
        assert server.stop() == 0
