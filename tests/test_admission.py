"""A request takes its place in the model's queue before its audio is decoded.

Before, the queue limit was checked only when the decoded audio reached the model, so a burst
of large requests was decoded in full (a 20 MB WAV each) before the surplus was refused.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from conftest import model_stalled
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing.launcher import RunningServer, start_server
from scrape import scrape, scrape_until, value

BURST = 8
QUEUE = 2


@pytest.fixture(scope="module")
def queue_server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    running = start_server(
        tdt_checkpoint,
        tmp_path_factory.mktemp("admission"),
        *("--max-queued-requests", str(QUEUE), "--max-message-bytes", str(32 * 1024 * 1024)),
        *("--audio-cache-bytes", "0", "--transcript-cache-bytes", "0"),
        *("--chunk-seconds", "10", "--chunk-overlap-seconds", "2"),
        *("--metrics-address", "127.0.0.1:0"),
    )
    yield running
    assert running.stop() == 0, running.log()


def _long_wav(seconds: float) -> bytes:
    noise = np.random.default_rng(7).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, noise, 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_a_burst_beyond_the_queue_is_refused_without_decoding_its_audio(
    queue_server: RunningServer,
) -> None:
    audio = _long_wav(30)  # 0.96 MB, 4 chunks of model time
    before = scrape(queue_server)
    stub = queue_server.stub()
    codes: list[grpc.StatusCode] = []
    messages: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(BURST)

    def call() -> None:
        start.wait()
        try:
            stub.Transcribe(pb.TranscribeRequest(audio=audio), timeout=300)
            code, message = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, message = error.code(), error.details() or ""
        with lock:
            codes.append(code)
            messages.append(message)

    threads = [threading.Thread(target=call) for _ in range(BURST)]
    # The model is frozen, so the first requests admitted hold the queue's places until the
    # burst is over: exactly QUEUE are served, whatever the machine's speed.
    with model_stalled(queue_server):
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(codes) < BURST - QUEUE:
            assert time.monotonic() < deadline, codes
            time.sleep(0.05)
    for thread in threads:
        thread.join(120)

    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == BURST - QUEUE, codes
    assert codes.count(grpc.StatusCode.OK) == QUEUE, codes
    assert all(
        "requests are already queued for the model (limit 2)" in message
        for code, message in zip(codes, messages, strict=True)
        if code != grpc.StatusCode.OK
    )
    after = scrape_until(
        queue_server,
        lambda s: (
            value(s, "parakeet_audio_decodes_total") - value(before, "parakeet_audio_decodes_total")
            >= QUEUE
        ),
    )
    decoded = value(after, "parakeet_audio_decodes_total") - value(
        before, "parakeet_audio_decodes_total"
    )
    # Every served request was decoded once; no refused one was decoded at all.
    assert decoded == QUEUE, (decoded, codes)
