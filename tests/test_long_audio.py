"""Long recordings: TranscribeLong's progress and segments, chunked Transcribe, bounded memory."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from conftest import model_stalled, transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server
from scrape import Samples, delta, scrape, scrape_until, value


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
        "--metrics-address",
        "127.0.0.1:0",
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


def _wav_of(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, 16000, format="WAV", subtype="PCM_16")
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


def _ended(server: RunningServer, request_id: str, status: str) -> tuple[int, int]:
    """The chunks done and the total from the log line that ended a request with `status`."""
    line = server.wait_for(
        re.compile(rf"id={request_id} rpc=TranscribeLong .*status={status} chunks=(\d+)/(\d+)"),
        timeout=10,
    )
    return int(line.group(1)), int(line.group(2))


def test_a_passed_deadline_stops_the_recording_at_the_next_chunk(
    long_server: RunningServer, long_wav: bytes
) -> None:
    # 30 chunks of 8 s overlapping by 2 s. The model is frozen after the first, the deadline
    # passes, then the model goes on: the request must stop there, not run the other chunks.
    samples = sf.read(io.BytesIO(long_wav), dtype="float32")[0]
    audio = _wav_of(np.tile(samples, 5)[: 180 * 16000])
    call = long_server.stub().TranscribeLong(pb.TranscribeLongRequest(audio=audio), timeout=3)
    request_id = next(call).request_id  # the total, sent before any chunk
    assert next(call).audio_processed_seconds > 0  # the first chunk is done
    with model_stalled(long_server), pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's own timer, started when the request arrived, may go off after the client's
    # has cancelled the call: either way the request ends there.
    done, total = _ended(long_server, request_id, "(?:DEADLINE_EXCEEDED|CANCELLED)")
    assert total == 30  # ceil((180 - 2) / 6)
    assert 1 <= done < total
    assert _long(long_server.stub(), long_wav)[-1].is_final  # and the server carries on


def test_a_request_whose_deadline_passes_in_the_queue_never_reaches_the_model(
    long_server: RunningServer, long_wav: bytes, speech_wav: bytes
) -> None:
    stub = long_server.stub()
    before = scrape(long_server)
    finished: list[pb.TranscribeLongResponse] = []
    with model_stalled(long_server):
        # A long recording's first chunk goes to the frozen model and stays there ...
        ahead = threading.Thread(target=lambda: finished.extend(_long(stub, long_wav)))
        ahead.start()
        scrape_until(long_server, lambda s: value(s, "parakeet_model_queue_depth") >= 1)
        time.sleep(0.3)  # decoded, and its chunk handed to the model
        # ... so a short recording queued behind it is still waiting when its deadline passes.
        with pytest.raises(grpc.RpcError) as caught:
            stub.Transcribe(pb.TranscribeRequest(audio=speech_wav), timeout=1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ahead.join(60)
    assert finished[-1].is_final

    def dropped(samples: Samples) -> float:
        # "deadline" if the server's own timer (started when the request arrived) went off
        # before the model reached the request, "cancelled" if only the client's had.
        return sum(
            delta(before, samples, "parakeet_model_dropped_total", reason=reason)
            for reason in ("deadline", "cancelled")
        )

    after = scrape_until(long_server, lambda s: dropped(s) > 0)
    assert dropped(after) == 1
    # No short recording ran: the one queued was dropped before the model saw it.
    assert delta(before, after, "parakeet_batch_size_count", work="oneshot") == 0
    assert re.search(
        r"rpc=Transcribe .*status=(DEADLINE_EXCEEDED|CANCELLED) chunks=0/1", long_server.log()
    )


def test_a_cancelled_call_stops_its_recording(long_server: RunningServer, long_wav: bytes) -> None:
    stub = long_server.stub()
    call = stub.TranscribeLong(pb.TranscribeLongRequest(audio=long_wav), timeout=300)
    request_id = next(call).request_id
    assert next(call).audio_processed_seconds > 0  # the first chunk is done
    with model_stalled(long_server):
        call.cancel()
        done, total = _ended(long_server, request_id, "CANCELLED")
    assert 1 <= done < total
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


def test_a_long_recording_is_transcribed_in_the_memory_of_one_chunk(
    tdt_checkpoint: Path,
) -> None:
    """MLX's peak memory (every buffer it allocated, not resident pages) over 2.5 minutes in
    8 s chunks is that of one chunk: the recording never enters MLX whole, as samples (9.6 MB
    here) or as one log-mel spectrogram (4.8 MB with this model's 80 mels)."""
    import mlx.core as mx

    from parakeet_server.domain import ChunkingConfig, TranscriptionOptions
    from parakeet_server.engine.model import ParakeetEngine

    engine = ParakeetEngine.load(
        str(tdt_checkpoint), chunking=ChunkingConfig(chunk_seconds=8.0, overlap_seconds=2.0)
    )
    engine.warm_up()
    rng = np.random.default_rng(11)

    def peak_of(seconds: int) -> tuple[int, int]:
        audio = rng.normal(0, 0.05, 16000 * seconds).astype(np.float32)
        mx.reset_peak_memory()
        steps = list(engine.transcribe_steps(audio, TranscriptionOptions(), segments=False))
        return mx.get_peak_memory(), steps[-1].chunks_total

    # One chunk's peak varies with how the encoder's two lanes interleave (which buffers are
    # alive at once): the most of three runs, and a margin of 2 MB, under the 4.8 MB that the
    # whole spectrogram would add (CI measured 15.7 MB against one run's 14.6 MB).
    ones = [peak_of(8) for _ in range(3)]
    assert all(chunks == 1 for _, chunks in ones)
    one = max(peak for peak, _ in ones)
    whole, chunks = peak_of(150)
    assert chunks == 25  # ceil((150 - 2) / 6)
    assert whole < one + 2_000_000, f"peak {whole / 1e6:.1f} MB, one chunk {one / 1e6:.1f} MB"
