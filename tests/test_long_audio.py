"""Long recordings: TranscribeLong's progress and segments, chunked Transcribe, bounded memory."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from conftest import transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server


@pytest.fixture(scope="module")
def long_server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server cutting recordings into 8 s chunks overlapping by 2 s."""
    running = start_server(
        tdt_checkpoint,
        tmp_path_factory.mktemp("logs"),
        "--chunk-seconds",
        "8",
        "--chunk-overlap-seconds",
        "2",
        "--max-message-bytes",
        "60000000",
        "--transcript-cache-bytes",
        "0",
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def long_wav(speech_dir: Path) -> bytes:
    """About 45 s: the spoken sentence eight times with pauses, as a 16 kHz WAV."""
    speech, rate = sf.read(speech_dir / "speech.wav", dtype="float32")
    noise = np.random.default_rng(1).normal(0, 0.003, rate // 2).astype(np.float32)
    audio = np.concatenate([np.concatenate([speech, noise]) for _ in range(8)])
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _long(
    stub: pb_grpc.TranscriptionServiceStub, audio: bytes, timeout: float = 300, **options: object
) -> list[pb.TranscribeLongResponse]:
    request = pb.TranscribeLongRequest(
        audio=audio,
        options=pb.TranscriptionOptions(**options),  # type: ignore[arg-type]
    )
    return list(stub.TranscribeLong(request, timeout=timeout))


def _seconds(duration: object) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]


def test_progress_then_segments_then_the_transcript(
    long_server: RunningServer, long_wav: bytes
) -> None:
    stub = long_server.stub()
    responses = _long(stub, long_wav, word_timestamps=True, segmentation={"max_words": 4})
    total = responses[0].audio_total_seconds
    assert total == pytest.approx(len(sf.read(io.BytesIO(long_wav))[0]) / 16000)
    assert responses[0].audio_processed_seconds == 0
    assert [r.is_final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert len({r.request_id for r in responses}) == 1
    processed = [r.audio_processed_seconds for r in responses]
    assert processed == sorted(processed)
    assert processed[-1] == pytest.approx(total)
    assert all(r.audio_total_seconds == total for r in responses)
    final = responses[-1]
    assert final.metrics.chunk_count == len(responses) - 1 >= 6
    assert final.metrics.audio_seconds == pytest.approx(total)
    # Segments arrive along the way, each once: together they are the final transcript's.
    streamed = [segment for r in responses for segment in r.segments]
    assert streamed == list(final.transcript.segments)
    assert sum(1 for r in responses[1:-1] if r.segments) >= 3
    words = [w for s in final.transcript.segments for w in s.words]
    starts = [_seconds(w.start_time) for w in words]
    assert starts == sorted(starts)
    assert starts[0] >= 0
    assert _seconds(words[-1].end_time) <= total + 1e-6
    assert starts[-1] > total - 8  # the last chunk's words sit at their place in the recording


def test_transcribe_gives_the_same_chunked_transcript(
    long_server: RunningServer, long_wav: bytes
) -> None:
    stub = long_server.stub()
    unary = transcribe(stub, long_wav, word_timestamps=True)
    final = _long(stub, long_wav, word_timestamps=True)[-1]
    assert unary.transcript == final.transcript
    assert unary.metrics.chunk_count == final.metrics.chunk_count > 1
    assert "chunks=" in long_server.log()


def test_short_audio_is_one_chunk(long_server: RunningServer, speech_wav: bytes) -> None:
    stub = long_server.stub()
    responses = _long(stub, speech_wav)
    assert len(responses) == 2  # the total, then the result
    assert responses[-1].is_final
    assert responses[-1].metrics.chunk_count == 1
    assert responses[-1].transcript == transcribe(stub, speech_wav).transcript


def test_bad_audio_ends_the_call_with_invalid_argument(long_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _long(long_server.stub(), b"definitely not audio" * 100)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not decode" in (caught.value.details() or "")


def test_a_passed_deadline_stops_between_chunks(
    long_server: RunningServer, long_wav: bytes
) -> None:
    stub = long_server.stub()
    # Keep the model busy so that the deadline passes while the long request waits.
    busy = threading.Thread(target=lambda: [_long(stub, long_wav) for _ in range(2)])
    busy.start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _long(stub, long_wav, timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        busy.join()
    assert _long(stub, long_wav)[-1].is_final  # and the server carries on


def test_a_cancelled_call_leaves_the_server_serving(
    long_server: RunningServer, long_wav: bytes
) -> None:
    stub = long_server.stub()
    call = stub.TranscribeLong(pb.TranscribeLongRequest(audio=long_wav), timeout=300)
    next(call)
    call.cancel()
    assert _long(stub, long_wav)[-1].is_final


def test_client_shows_progress(long_server: RunningServer, long_wav: bytes, tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    path.write_bytes(long_wav)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "parakeet_client",
            "--server",
            long_server.address,
            "transcribe",
            "--progress",
            str(path),
        ],
        capture_output=True,
        timeout=300,
    )
    stderr = result.stderr.decode()  # bytes: text mode would turn the bar's \r into \n
    assert result.returncode == 0, stderr
    bars = stderr.split("\r")
    assert any("  0%" in bar for bar in bars)
    assert "100%" in bars[-1]
    assert len(bars) >= 4
    assert "PERF audio=" in stderr


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_twenty_minutes_in_bounded_memory(long_server: RunningServer, tmp_path: Path) -> None:
    # 20 minutes of MP3 (5 MB) decode to 77 MB of 16 kHz float32; peak memory may grow by
    # about that, never by the whole recording's features or attention.
    mp3 = tmp_path / "long.mp3"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-f", "lavfi"),
            *("-i", "anoisesrc=d=1200:a=0.05:s=16000:c=pink", "-ac", "1", "-b:a", "32k", str(mp3)),
        ],
        check=True,
        timeout=120,
    )
    worker = long_server.stub().GetServerInfo(pb.GetServerInfoRequest(), timeout=10).worker_pid
    pids = {"server": long_server.process.pid, "worker": worker}
    before = {name: _peak_rss(pid) for name, pid in pids.items()}
    responses = _long(long_server.stub(), mp3.read_bytes(), timeout=600)
    grown = {name: _peak_rss(pid) - before[name] for name, pid in pids.items()}
    final = responses[-1]
    assert final.is_final
    assert final.metrics.audio_seconds == pytest.approx(1200, abs=0.1)
    assert final.metrics.chunk_count == 200  # ceil((1200 - 2) / 6)
    audio_bytes = 1200 * 16000 * 4
    # The server decodes (and caches) it once; the worker receives it once.
    assert grown["server"] < 2 * audio_bytes, f"server peak grew {grown['server'] / 1e6:.0f} MB"
    assert grown["worker"] < 2 * audio_bytes, f"worker peak grew {grown['worker'] / 1e6:.0f} MB"
