"""StreamingTranscribe through a real server: protocol, equivalence, modes, limits, memory."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile

from conftest import details, stream, transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server
from scrape import scrape, value

LINEAR16 = pb.AudioFormat.ENCODING_LINEAR16
FLOAT32 = pb.AudioFormat.ENCODING_FLOAT32
STREAMING = pb.FINALIZATION_MODE_STREAMING
FULL_CONTEXT = pb.FINALIZATION_MODE_FULL_CONTEXT
AUTO = pb.FINALIZATION_MODE_AUTO


@pytest.fixture(scope="module")
def pcm(speech_dir: Path) -> bytes:
    """The test sentence as 16 kHz mono LINEAR16."""
    return (speech_dir / "speech.s16le").read_bytes()


@pytest.fixture(scope="module")
def long_pcm(pcm: bytes) -> bytes:
    """About 45 s: the sentence ten times, so many blocks pass."""
    return pcm * 10


def _seconds(duration: object) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]


def _final(responses: list[pb.StreamingTranscribeResponse]) -> pb.StreamingTranscribeResponse:
    assert [r.is_final for r in responses].count(True) == 1
    assert responses[-1].is_final
    return responses[-1]


# --- protocol ---------------------------------------------------------------------------------


def test_streaming_mode_sends_growing_partials_then_one_final(
    stub: pb_grpc.TranscriptionServiceStub, long_pcm: bytes
) -> None:
    responses = stream(stub, long_pcm, mode=STREAMING)
    final = _final(responses)
    partials = responses[:-1]
    assert len(partials) >= 20  # one per 1.28 s block of ~45 s
    finalized = ""
    processed = 0.0
    for response in responses:
        assert response.finalized_text.startswith(finalized), "finalized text was rewritten"
        finalized = response.finalized_text
        assert response.audio_processed_seconds >= processed
        processed = response.audio_processed_seconds
    assert any(p.draft_text for p in partials)
    assert not final.draft_text
    audio_seconds = len(long_pcm) / 2 / 16000
    assert final.audio_processed_seconds == pytest.approx(audio_seconds)
    assert final.metrics.audio_seconds == pytest.approx(audio_seconds)
    assert final.metrics.word_count == len(final.transcript.text.split())
    assert final.finalization_latency_seconds > 0
    assert final.transcript.text


def test_final_words_carry_times_from_the_stream_start(
    stub: pb_grpc.TranscriptionServiceStub, long_pcm: bytes
) -> None:
    final = _final(stream(stub, long_pcm, mode=STREAMING, word_timestamps=True))
    words = [w for s in final.transcript.segments for w in s.words]
    starts = [_seconds(w.start_time) for w in words]
    assert starts == sorted(starts)
    audio_seconds = len(long_pcm) / 2 / 16000
    assert starts[-1] > audio_seconds - 5  # the last words sit at the end, not at 0
    assert _seconds(words[-1].end_time) <= audio_seconds + 0.5


def test_without_interim_results_only_the_final_is_sent(
    stub: pb_grpc.TranscriptionServiceStub, long_pcm: bytes
) -> None:
    for mode in (STREAMING, FULL_CONTEXT, AUTO):
        responses = stream(stub, long_pcm, mode=mode, interim=False)
        assert len(responses) == 1
        assert responses[0].is_final


@pytest.mark.parametrize(
    ("chunk_bytes", "seconds"),
    [(1, 2), (2, 2), (320, 2), (96000, 9)],
    ids=["1-byte", "1-sample", "10ms", "3s"],
)
def test_any_chunking_gives_the_same_result(
    stub: pb_grpc.TranscriptionServiceStub, pcm: bytes, chunk_bytes: int, seconds: int
) -> None:
    audio = (pcm * 2)[: 16000 * 2 * seconds]
    if chunk_bytes <= 2:
        # A call per byte is slow: the tiny messages cover the last 5000 bytes, across the
        # end of the first block and its look-ahead (1.92 s, byte 61440) and the stream's end.
        tiny_from = len(audio) - 5000
        pieces = [
            audio[start : min(start + 4096, tiny_from)] for start in range(0, tiny_from, 4096)
        ]
        pieces += [audio[at : at + chunk_bytes] for at in range(tiny_from, len(audio), chunk_bytes)]
    else:
        pieces = [audio[at : at + chunk_bytes] for at in range(0, len(audio), chunk_bytes)]
        assert len(pieces) >= 3
    reference = _final(stream(stub, audio, chunk_bytes=4096, mode=STREAMING))
    got = _final(stream(stub, audio, pieces=pieces, mode=STREAMING))
    assert got.transcript == reference.transcript
    assert got.finalized_text == reference.finalized_text


# --- equivalence with Transcribe --------------------------------------------------------------


def test_full_context_final_equals_transcribe(
    stub: pb_grpc.TranscriptionServiceStub, pcm: bytes
) -> None:
    unary = transcribe(stub, pcm, encoding=LINEAR16, sample_rate=16000, word_timestamps=True)
    final = _final(stream(stub, pcm, mode=FULL_CONTEXT, word_timestamps=True))
    assert final.transcript == unary.transcript
    assert final.finalized_text == unary.transcript.text


def test_full_context_final_equals_transcribe_for_resampled_stereo(
    stub: pb_grpc.TranscriptionServiceStub, speech_dir: Path
) -> None:
    samples, rate = soundfile.read(speech_dir / "speech_stereo.wav", dtype="int16")
    assert rate == 44100
    assert samples.shape[1] == 2
    raw = samples.tobytes()
    unary = transcribe(stub, raw, encoding=LINEAR16, sample_rate=44100, channels=2)
    final = _final(
        stream(stub, raw, mode=FULL_CONTEXT, sample_rate=44100, channels=2, chunk_bytes=1234)
    )
    assert final.transcript == unary.transcript


def test_full_context_partials_are_drafts_only(
    stub: pb_grpc.TranscriptionServiceStub, long_pcm: bytes
) -> None:
    responses = stream(stub, long_pcm, mode=FULL_CONTEXT)
    assert all(not r.finalized_text for r in responses[:-1])
    assert any(r.draft_text for r in responses[:-1])
    assert _final(responses).finalized_text


def test_auto_mode_uses_full_context_for_short_utterances(
    stub: pb_grpc.TranscriptionServiceStub, pcm: bytes
) -> None:
    unary = transcribe(stub, pcm, encoding=LINEAR16, sample_rate=16000)
    assert _final(stream(stub, pcm, mode=AUTO)).transcript == unary.transcript
    unspecified = _final(stream(stub, pcm, mode=pb.FINALIZATION_MODE_UNSPECIFIED))
    assert unspecified.transcript == unary.transcript


def test_float32_stream_equals_linear16_stream(
    stub: pb_grpc.TranscriptionServiceStub, pcm: bytes
) -> None:
    as_float = (np.frombuffer(pcm, "<i2").astype("<f4") / 32768).tobytes()
    expected = _final(stream(stub, pcm, mode=STREAMING)).transcript
    got = _final(stream(stub, as_float, mode=STREAMING, encoding=FLOAT32, chunk_bytes=999))
    # The same samples up to float rounding: the same tokens at the same times.
    assert got.transcript.text == expected.text
    assert [(s.start_time, s.end_time) for s in got.transcript.segments] == [
        (s.start_time, s.end_time) for s in expected.segments
    ]


# --- many at once ----------------------------------------------------------------------------


def test_four_streams_and_interleaved_transcribes_equal_their_results_alone(
    server: RunningServer, pcm: bytes, speech_wav: bytes
) -> None:
    inputs = [pcm[: 16000 * 2 * seconds] for seconds in (2, 3, 4)] + [pcm]
    modes = [STREAMING, FULL_CONTEXT, STREAMING, AUTO]
    alone = [
        _final(stream(server.stub(), audio, mode=mode)).transcript
        for audio, mode in zip(inputs, modes, strict=True)
    ]
    unary_alone = transcribe(server.stub(), speech_wav).transcript

    def run_stream(index: int) -> pb.Transcript:
        audio, mode = inputs[index], modes[index]
        return _final(stream(server.stub(), audio, mode=mode, chunk_bytes=640)).transcript

    def run_unary(_: int) -> pb.Transcript:
        return transcribe(server.stub(), speech_wav).transcript

    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(run_stream, i) for i in range(4)]
        unaries = [pool.submit(run_unary, i) for i in range(4)]
        assert [f.result() for f in streams] == alone
        assert all(f.result() == unary_alone for f in unaries)


# --- bad sequences ---------------------------------------------------------------------------


def _call(
    stub: pb_grpc.TranscriptionServiceStub, messages: list[pb.StreamingTranscribeRequest]
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.StreamingTranscribe(iter(messages), timeout=30))
    return raised.value


def _config(*, interim: bool = False, **fmt: int) -> pb.StreamingTranscribeRequest:
    fields = {"encoding": LINEAR16, "sample_rate_hertz": 16000, "channel_count": 1, **fmt}
    return pb.StreamingTranscribeRequest(
        config=pb.StreamingConfig(
            format=pb.AudioFormat(**fields),  # type: ignore[arg-type]
            interim_results=interim,
            finalization_mode=STREAMING,
        )
    )


def _audio(data: bytes) -> pb.StreamingTranscribeRequest:
    return pb.StreamingTranscribeRequest(audio=data)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([_audio(b"\x00" * 3200), _config()], "first message"),
        ([], "first message"),
        ([_config(), _audio(b"\x00" * 32000), _config()], "only be the first"),
        ([_config(encoding=pb.AudioFormat.ENCODING_UNSPECIFIED)], "raw PCM"),
        ([_config(sample_rate_hertz=0)], "sample rate"),
        ([_config(sample_rate_hertz=10_000_000)], "sample rate"),
        ([_config(channel_count=3)], "1 or 2 channels"),
        ([_config(), _audio(b"\x00" * 32001)], "ended inside a frame"),
        ([_config(), _audio(b"\x00\x00")], "at least 80 ms"),
        ([_config()], "at least 80 ms"),
        (
            [_config(encoding=FLOAT32), _audio(np.full(800, np.nan, "<f4").tobytes())],
            "NaN",
        ),
    ],
    ids=[
        "audio-before-config",
        "nothing",
        "second-config",
        "container",
        "no-rate",
        "absurd-rate",
        "three-channels",
        "half-sample-at-end",
        "one-sample",
        "no-audio",
        "nan",
    ],
)
def test_bad_streams_are_invalid_argument(
    server: RunningServer,
    stub: pb_grpc.TranscriptionServiceStub,
    pcm: bytes,
    messages: list[pb.StreamingTranscribeRequest],
    message: str,
) -> None:
    error = _call(stub, messages)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in details(error)
    assert _final(stream(stub, pcm[:32000], mode=STREAMING)).is_final  # still serving


def test_beam_search_needs_full_context(stub: pb_grpc.TranscriptionServiceStub, pcm: bytes) -> None:
    beam = pb.DECODING_METHOD_BEAM
    with pytest.raises(grpc.RpcError) as raised:
        stream(stub, pcm, mode=STREAMING, decoding_method=beam, beam_size=2)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FULL_CONTEXT" in details(raised.value)
    unary = transcribe(
        stub, pcm, encoding=LINEAR16, sample_rate=16000, decoding_method=beam, beam_size=2
    )
    full = stream(stub, pcm, mode=FULL_CONTEXT, decoding_method=beam, beam_size=2)
    assert _final(full).transcript == unary.transcript
    # ... and it is beam search that ran: on this sentence greedy decoding finds another text
    # (tests/test_transcribe.py shows the two apart).
    greedy = _final(stream(stub, pcm, mode=FULL_CONTEXT)).transcript
    assert _final(full).transcript.text != greedy.text


def _active_streams(stub: pb_grpc.TranscriptionServiceStub) -> int:
    return int(stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).active_streams)


def test_a_cancelled_stream_frees_its_session_at_once(
    stub: pb_grpc.TranscriptionServiceStub, pcm: bytes
) -> None:
    started = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield _config()
        yield _audio(pcm[:64000])
        started.set()
        release.wait(30)

    call = stub.StreamingTranscribe(requests(), timeout=60)
    assert started.wait(10)
    deadline = time.monotonic() + 10
    while _active_streams(stub) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active_streams(stub) == 1
    call.cancel()
    release.set()
    deadline = time.monotonic() + 10
    while _active_streams(stub) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active_streams(stub) == 0


# --- limits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    running = start_server(
        tdt_checkpoint,
        tmp_path_factory.mktemp("strict"),
        "--max-streams",
        "1",
        "--max-stream-seconds",
        "6",
        "--stream-idle-timeout-seconds",
        "1",
        "--auto-full-context-seconds",
        "2",
    )
    yield running
    assert running.stop() == 0, running.log()


def test_streams_over_the_limit_are_resource_exhausted(
    strict_server: RunningServer, pcm: bytes
) -> None:
    stub = strict_server.stub()
    release = threading.Event()

    def holding() -> Iterator[pb.StreamingTranscribeRequest]:
        yield _config()
        yield _audio(pcm[:32000])
        release.wait(20)

    first = stub.StreamingTranscribe(holding(), timeout=60)
    deadline = time.monotonic() + 10
    while _active_streams(stub) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    error = _call(stub, [_config(), _audio(pcm[:32000])])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "streams are open" in details(error)
    release.set()
    assert _final(list(first)).is_final


def test_streams_longer_than_the_limit_are_out_of_range(
    strict_server: RunningServer, long_pcm: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stream(strict_server.stub(), long_pcm[: 16000 * 2 * 8], mode=STREAMING)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "6 s" in details(raised.value)


def test_an_idle_stream_is_ended_with_deadline_exceeded(
    strict_server: RunningServer, pcm: bytes
) -> None:
    def stalling() -> Iterator[pb.StreamingTranscribeRequest]:
        yield _config()
        yield _audio(pcm[:32000])
        time.sleep(3)

    with pytest.raises(grpc.RpcError) as raised:
        list(strict_server.stub().StreamingTranscribe(stalling(), timeout=30))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message arrived for 1 s" in details(raised.value)


def test_auto_mode_streams_past_its_full_context_limit(
    strict_server: RunningServer, pcm: bytes
) -> None:
    audio = pcm[: 16000 * 2 * 5]  # 5 s > the 2 s limit
    responses = stream(strict_server.stub(), audio, mode=AUTO)
    assert any(r.finalized_text for r in responses[:-1])  # streaming finalization
    streamed = _final(stream(strict_server.stub(), audio, mode=STREAMING))
    assert _final(responses).transcript == streamed.transcript
    assert "final=streaming" in strict_server.log()


# --- long streams ----------------------------------------------------------------------------


def _peak_resident_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had (pages actually touched)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_ten_minute_stream_keeps_step_time_and_memory_flat(metered_server: RunningServer) -> None:
    stub = metered_server.stub()
    worker = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).worker_pid
    rng = np.random.default_rng(7)
    minute = (rng.normal(0, 3000, 16000 * 60)).clip(-32768, 32767).astype("<i2").tobytes()
    arrivals: list[float] = []
    # After each minute of audio the server has processed: the peak resident memory of the
    # server and of the model process, and the bytes MLX holds in live arrays.
    memory: list[tuple[int, int, int]] = []

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield _config(interim=True)
        for _ in range(10):
            for start in range(0, len(minute), 64000):
                yield _audio(minute[start : start + 64000])

    for response in stub.StreamingTranscribe(requests(), timeout=600):
        arrivals.append(time.monotonic())
        if not response.is_final and response.audio_processed_seconds >= 60 * (len(memory) + 1):
            info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
            memory.append(
                (
                    _peak_resident_bytes(metered_server.process.pid),
                    _peak_resident_bytes(worker),
                    info.mlx_active_memory_bytes,
                )
            )
        final = response
    assert final.is_final
    assert final.metrics.audio_seconds == pytest.approx(600)
    assert len(memory) == 9  # minutes 1 to 9 (the tenth ends with the final)
    # Fed faster than real time, responses come one per block as fast as blocks run:
    # their spacing is the per-block cost, which must not grow with the stream.
    gaps = np.diff(arrivals[:-1])
    early, late = np.median(gaps[20:120]), np.median(gaps[-100:])
    assert late < 2.0 * early, (early, late)
    # The first minutes fill MLX's buffer cache and the attention caches; from minute 3 on
    # nothing may accumulate. A leak grows every minute (keeping the stream's audio as float32:
    # 3.8 MB a minute), so the median minute does; a one-off step (an allocator taking a new
    # heap) moves one minute only.
    mb = np.array(memory[2:]) / 1e6
    report = "from minute 3, MB (server peak, worker peak, MLX active): " + "; ".join(
        f"{server:.1f}, {model:.1f}, {mlx:.2f}" for server, model, mlx in mb
    )
    for column in (0, 1):
        growth = np.diff(mb[:, column])
        assert np.median(growth) < 0.5, report
        assert growth.sum() < 12, report
    assert np.ptp(mb[:, 2]) < 1.0, report  # MLX's own count of the bytes it holds
    assert re.search(r"blocks=4\d\d ", metered_server.log())


def test_stream_survives_a_1_sample_tail_and_odd_rates(
    stub: pb_grpc.TranscriptionServiceStub, speech_dir: Path
) -> None:
    samples, rate = soundfile.read(
        io.BytesIO((speech_dir / "speech_8000.wav").read_bytes()), dtype="int16"
    )
    raw = samples.tobytes()
    unary = transcribe(stub, raw, encoding=LINEAR16, sample_rate=rate)
    final = _final(stream(stub, raw, mode=FULL_CONTEXT, sample_rate=rate, chunk_bytes=333))
    assert final.transcript == unary.transcript


def test_a_client_that_stops_reading_stalls_only_its_own_stream(
    metered_server: RunningServer, pcm: bytes
) -> None:
    # A client that reads nothing, with a 1 KB receive window that never grows: its partial
    # results fill the window, then the server's write waits, and the server stops working
    # on that stream (and, 10 s of audio later, stops reading it), while it serves the others.
    stalled_channel = grpc.insecure_channel(
        metered_server.address,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)],
    )
    noise = (np.random.default_rng(9).normal(0, 3000, 16000 * 60)).astype("<i2").tobytes()

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield _config(interim=True)
        for start in range(0, len(noise), 3200):
            yield _audio(noise[start : start + 3200])

    def blocks_run() -> float:
        return value(scrape(metered_server), "parakeet_batch_size_sum", work="stream")

    start = blocks_run()
    stalled = pb_grpc.TranscriptionServiceStub(stalled_channel).StreamingTranscribe(
        requests(), timeout=120
    )
    try:
        # Wait until the server has stopped running its blocks (unchanged for a second).
        counts = [blocks_run()]
        deadline = time.monotonic() + 60
        while not (counts[-1] > start and counts[-4:] == [counts[-1]] * 4):
            assert time.monotonic() < deadline, f"the stream never stalled: {counts}"
            time.sleep(0.3)
            counts.append(blocks_run())
        held = counts[-1]
        assert held - start < 45  # well before the end of its 60 s (46 blocks)
        # Meanwhile a Transcribe and another stream are served as usual, each promptly.
        stub = metered_server.stub()
        started = time.monotonic()
        assert transcribe(stub, pcm, encoding=LINEAR16, sample_rate=16000).transcript.text
        other = stream(stub, pcm, mode=STREAMING)
        assert _final(other).transcript.text
        assert time.monotonic() - started < 10
        # ... and every block run since was the other stream's: one per partial result.
        assert blocks_run() - held == len(other) - 1
        assert _active_streams(stub) == 1  # the stalled stream is still open, only waiting
        lag = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).max_stream_lag
        assert lag.ToNanoseconds() / 1e9 == pytest.approx(10, abs=0.5)  # backlog held, no more
    finally:
        stalled.cancel()
        stalled_channel.close()
