"""Nothing a request leaves behind may accumulate: read at quiescent points, between rounds of
every kind of request, from the server's own memory reports (SIGUSR1, --memory-report-dir).

Resident memory cannot tell a leak from the allocators settling (bench/soak.py shows both),
so this test reads what holds the memory instead: Python's live allocations made from the
server's own code (tracemalloc), the number of Python objects, and, in the model worker, MLX's
live arrays and the C heap in use. A per-request object kept anywhere grows the first two with
every round; a stream or stepwise job the worker never forgets grows the others.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import stream
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server
from parakeet_server.testing.memory import (
    MemoryProbe,
    MemoryReport,
    describe_site,
    grown_sites,
    wait_quiet,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="memory reports are requested with SIGUSR1"
)

FLOAT32 = pb.AudioFormat.ENCODING_FLOAT32
ROUNDS = 4
REQUESTS_PER_ROUND = 8


@pytest.fixture(scope="module")
def traced(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, MemoryProbe]]:
    logs = tmp_path_factory.mktemp("memory")
    running = start_server(
        tdt_checkpoint,
        logs,
        *("--audio-cache-bytes", "0", "--transcript-cache-bytes", "0"),
        *("--chunk-seconds", "8", "--chunk-overlap-seconds", "2"),
        # Each message of a stream arms a timer for this long (cancelled timers stay queued
        # until due): short, so that none is left at the quiescent points.
        *("--stream-idle-timeout-seconds", "3"),
        *("--memory-report-dir", str(logs / "reports")),
        env={**os.environ, "PYTHONTRACEMALLOC": "8"},
        timeout=300,  # imports run traced: slower to start
    )
    yield running, MemoryProbe(running.process.pid, logs / "reports")
    assert running.stop() == 0, running.log()


def _pcm(rng: np.random.Generator, seconds: float) -> bytes:
    n = int(seconds * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / 16000)
    return (rng.normal(0, 0.1, n) * envelope).astype("<f4").tobytes()


def _round(stub: pb_grpc.TranscriptionServiceStub, rng: np.random.Generator) -> None:
    """Every kind of request once or more, each with new audio: 8 requests."""
    audio = pb.AudioFormat(encoding=FLOAT32, sample_rate_hertz=16000)
    for _ in range(3):
        stub.Transcribe(
            pb.TranscribeRequest(audio=_pcm(rng, rng.uniform(1, 3)), format=audio), timeout=120
        )
    long = pb.TranscribeLongRequest(audio=_pcm(rng, 20), format=audio)
    assert list(stub.TranscribeLong(long, timeout=120))[-1].is_final
    for mode in (pb.FINALIZATION_MODE_STREAMING, pb.FINALIZATION_MODE_FULL_CONTEXT):
        responses = stream(stub, _pcm(rng, 4), encoding=FLOAT32, chunk_bytes=6400, mode=mode)
        assert responses[-1].is_final
    with pytest.raises(grpc.RpcError) as refused:  # the error path leaves nothing either
        stub.Transcribe(pb.TranscribeRequest(audio=b"RIFF-not-audio" * 50), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A stream the client abandons halfway (cancelled): its worker session must go too.
    config = pb.StreamingConfig(format=audio, interim_results=True)
    chunks = [pb.StreamingTranscribeRequest(config=config)] + [
        pb.StreamingTranscribeRequest(audio=_pcm(rng, 0.5)) for _ in range(8)
    ]
    call = stub.StreamingTranscribe(iter(chunks), timeout=120)
    next(call)  # a partial: the worker holds the stream's session now
    call.cancel()
    wait_quiet(stub, settle=3.5)


def _growth(before: MemoryReport, after: MemoryReport) -> str:
    sites = "\n".join(describe_site(diff) for diff in grown_sites(before, after, limit=6))
    return (
        f"python objects {before.server['python_objects']} -> {after.server['python_objects']}, "
        f"traced in parakeet_server {before.package_traced_bytes()} -> "
        f"{after.package_traced_bytes()} B, worker {before.worker} -> {after.worker}\n{sites}"
    )


@pytest.mark.timeout(900)
def test_requests_leave_nothing_behind(traced: tuple[RunningServer, MemoryProbe]) -> None:
    running, probe = traced
    stub = running.stub()
    rng = np.random.default_rng(17)
    for _ in range(3):  # first uses: caches, pools and lazily built tables settle
        _round(stub, rng)
    probe.report()  # the report's own first use (tracemalloc's, json's) settles too
    before = probe.report()
    for _ in range(ROUNDS):
        _round(stub, rng)
    middle = probe.report()
    for _ in range(ROUNDS):
        _round(stub, rng)
    after = probe.report()
    report = _growth(before, middle) + "\nthen " + _growth(middle, after)
    requests = ROUNDS * REQUESTS_PER_ROUND
    # Python: under 256 bytes and one object per request through our own code (measured:
    # 0 objects and 3-7 KB over 32-64 requests, small strings of decoded tokens, once 10 KB
    # in one interval); keeping any per-request object (a job, a context, a response) costs
    # hundreds of bytes each. A leak grows in both intervals; a one-off (a set or dict
    # resized, a pool's thread) in one: the smaller growth is compared.
    traced_growth = min(
        later.package_traced_bytes() - earlier.package_traced_bytes()
        for earlier, later in ((before, middle), (middle, after))
    )
    assert traced_growth < 256 * requests, report
    objects = min(
        later.server["python_objects"] - earlier.server["python_objects"]
        for earlier, later in ((before, middle), (middle, after))
    )
    assert objects < requests, report
    # The worker: every stream's and stepwise job's arrays are released (MLX's live arrays
    # are the weights again), and its C heap holds no more than before. MLX's reuse cache
    # lives in that heap and is emptied every few stream blocks, so it is left out.
    assert after.worker["mlx_active"] - before.worker["mlx_active"] < 64 * 1024, report
    heap_before, heap_after = (
        r.worker["heap_in_use"] - r.worker["mlx_cache"] for r in (before, after)
    )
    assert heap_after - heap_before < 2 * 1024 * 1024, report
