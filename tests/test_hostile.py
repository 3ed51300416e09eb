"""Hostile and broken input through a real server: each gets its status and a precise message,
and the server keeps serving.

What tests/test_errors.py, tests/test_streaming.py and tests/test_audio.py already cover is not
repeated here (garbage bytes as text, empty audio, 0/negative/10 MHz rates, 64 channels, NaN,
audio before the config, two configs, a 1-sample stream, a stream without audio, a request well
over the size limit, one stream over --max-streams 1).
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import details, transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server

LINEAR16 = pb.AudioFormat.ENCODING_LINEAR16
FLOAT32 = pb.AudioFormat.ENCODING_FLOAT32
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
LIMIT = 3_000_000  # the shared server's --max-message-bytes
ONE_SECOND = bytes(32000)  # 1 s of 16 kHz LINEAR16 silence


def assert_serving(running: RunningServer, speech_wav: bytes) -> None:
    """Health says SERVING, a normal request is answered, and nothing crashed in the log."""
    health = health_pb2_grpc.HealthStub(running.channel())
    check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert transcribe(running.stub(), speech_wav).transcript.segments
    assert "Traceback" not in running.log()


@pytest.fixture(autouse=True)
def _still_serving(server: RunningServer, speech_wav: bytes) -> Iterator[None]:
    yield
    assert_serving(server, speech_wav)


def _error(call: object) -> grpc.RpcError:
    """Runs `call` (a no-argument callable) and returns the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def _long(stub: pb_grpc.TranscriptionServiceStub, audio: bytes, **fmt: int) -> None:
    list(
        stub.TranscribeLong(
            pb.TranscribeLongRequest(audio=audio, format=pb.AudioFormat(**fmt)),  # type: ignore[arg-type]
            timeout=60,
        )
    )


def _config(**fmt: int) -> pb.StreamingTranscribeRequest:
    fields = {"encoding": LINEAR16, "sample_rate_hertz": 16000, "channel_count": 1, **fmt}
    return pb.StreamingTranscribeRequest(
        config=pb.StreamingConfig(
            format=pb.AudioFormat(**fields),  # type: ignore[arg-type]
            finalization_mode=pb.FINALIZATION_MODE_STREAMING,
        )
    )


def _audio(data: bytes) -> pb.StreamingTranscribeRequest:
    return pb.StreamingTranscribeRequest(audio=data)


def _stream(
    stub: pb_grpc.TranscriptionServiceStub, messages: list[pb.StreamingTranscribeRequest]
) -> list[pb.StreamingTranscribeResponse]:
    return list(stub.StreamingTranscribe(iter(messages), timeout=60))


# --- random and truncated files ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_are_invalid_argument_on_both_unary_rpcs(
    stub: pb_grpc.TranscriptionServiceStub, seed: int
) -> None:
    data = np.random.default_rng(seed).bytes(5000 + 7000 * seed)
    for call in (lambda: transcribe(stub, data), lambda: _long(stub, data)):
        error = _error(call)
        assert error.code() == INVALID, error.details()
        assert "not in a supported format" in details(error)
        assert "LINEAR16" in details(error)  # the hint for headerless PCM


# What a cut file gives is decided by where its format keeps what a decoder needs:
# - cut inside the header (12 bytes) nothing is known yet: INVALID_ARGUMENT for every format;
# - WAV, FLAC and MP3 are a header then self-contained frames: a cut after the header decodes
#   the frames before it, so the right answer is OK with the shorter audio (transcribed);
# - ffmpeg's m4a puts the sample table ("moov") after the audio: without the file's end no
#   sample can be found, so any cut is INVALID_ARGUMENT.
_CUTS = {"header": 12, "half": 0.5, "nine-tenths": 0.9}
_DECODES_ITS_HEAD = {"wav", "flac", "mp3"}


@pytest.mark.parametrize("cut", list(_CUTS))
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a"])
def test_truncated_file_gives_its_head_or_invalid_argument(
    stub: pb_grpc.TranscriptionServiceStub, speech_dir: Path, fmt: str, cut: str
) -> None:
    data = (speech_dir / f"speech.{fmt}").read_bytes()
    full = transcribe(stub, data).metrics.audio_seconds
    keep = _CUTS[cut]
    head = data[: keep if isinstance(keep, int) else int(len(data) * keep)]

    if cut != "header" and fmt in _DECODES_ITS_HEAD:
        response = transcribe(stub, head)
        kept = response.metrics.audio_seconds / full
        assert keep - 0.2 < kept < keep + 0.1, (kept, keep)
        assert response.transcript.segments
    else:
        error = _error(lambda: transcribe(stub, head))
        assert error.code() == INVALID, error.details()
        assert "damaged or truncated" in details(error)


# --- lying sizes -----------------------------------------------------------------------------


def _wav_claiming(speech_wav: bytes, data_size: int, keep_samples: int | None) -> bytes:
    data = bytearray(speech_wav)
    at = data.index(b"data")
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)  # RIFF size
    data[at + 4 : at + 8] = struct.pack("<I", data_size)
    end = len(data) if keep_samples is None else at + 8 + 2 * keep_samples
    return bytes(data[:end])


def _peak_virtual_bytes(pid: int) -> int:
    """VmPeak: the most address space the process ever had. Unlike resident memory it counts
    an allocation whose pages were never touched (a calloc'd 4 GB buffer, an mmap)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmPeak")


def test_wav_header_claiming_4gb_gets_what_is_there(
    server: RunningServer, stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    before = _peak_virtual_bytes(server.process.pid)
    whole = _wav_claiming(speech_wav, 0xFFFFFFF0, None)
    # The samples that are there are transcribed: the header's length is not believed.
    response = transcribe(stub, whole)
    assert response.metrics.audio_seconds == pytest.approx(4.5, abs=0.3)

    few = _wav_claiming(speech_wav, 0xFFFFFFF0, 5)
    error = _error(lambda: transcribe(stub, few))
    assert error.code() == INVALID
    assert "needs at least 80 ms" in details(error)

    none = _wav_claiming(speech_wav, 0xFFFFFFF0, 0)
    error = _error(lambda: transcribe(stub, none))
    assert error.code() == INVALID
    assert "no audio samples" in details(error)
    # Nothing was allocated for the claimed 4 GB (or the 2 GB below), not even untouched.
    _error(lambda: transcribe(stub, _wav_claiming(speech_wav, 0x7FFFFFFF, 64)))
    assert _peak_virtual_bytes(server.process.pid) - before < 1e9


def _raw_grpc_call(address: tuple[str, int], frame: bytes) -> dict[str, str]:
    """Sends one gRPC frame to Transcribe over plain HTTP/2 (without half-closing); returns the
    response headers and trailers. grpcio computes the length prefix itself, so a prefix that
    lies needs a hand-made frame."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/parakeet.v1.TranscriptionService/Transcribe"),
            (":authority", f"{address[0]}:{address[1]}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    connection.send_data(stream_id, frame)
    headers: dict[str, str] = {}
    with socket.create_connection(address, timeout=20) as sock:
        sock.sendall(connection.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, f"the server closed the connection without a status: {headers}"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers.update((bytes(k).decode(), bytes(v).decode()) for k, v in event.headers)
                ended |= isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
            sock.sendall(connection.data_to_send())
    return headers


@pytest.mark.parametrize("claimed", [2**31 - 1, 2**32 - 1])
def test_grpc_frame_claiming_2gb_is_refused_without_waiting_or_allocating(
    server: RunningServer, claimed: int
) -> None:
    before = _peak_virtual_bytes(server.process.pid)
    # A few bytes of a TranscribeRequest behind a length prefix of 2 (or 4) GB, and the stream
    # left open: the server must answer from the prefix alone.
    frame = b"\x00" + struct.pack(">I", claimed) + b"\x0a\x05hello"
    headers = _raw_grpc_call(("127.0.0.1", server.port), frame)
    assert headers["grpc-status"] == str(EXHAUSTED.value[0]), headers
    assert f"larger than max ({claimed} vs." in headers["grpc-message"]
    assert _peak_virtual_bytes(server.process.pid) - before < 1e9


def test_audio_one_byte_over_the_limit_is_resource_exhausted(
    stub: pb_grpc.TranscriptionServiceStub,
) -> None:
    # gRPC's own limit leaves room for the request's other fields; the audio gets none.
    over = bytes(LIMIT + 2)  # whole LINEAR16 samples
    for call in (
        lambda: transcribe(stub, over, encoding=LINEAR16, sample_rate=16000),
        lambda: _long(stub, over, encoding=LINEAR16, sample_rate_hertz=16000),
        lambda: _stream(stub, [_config(), _audio(ONE_SECOND), _audio(over)]),
    ):
        error = _error(call)
        assert error.code() == EXHAUSTED, error.details()
        assert f"{LIMIT + 2} bytes of audio" in details(error)
        assert f"(--max-message-bytes) is {LIMIT} bytes" in details(error)
    at_limit = transcribe(stub, bytes(LIMIT), encoding=LINEAR16, sample_rate=16000)
    assert at_limit.metrics.audio_seconds == pytest.approx(LIMIT / 32000)


# --- empty, non-finite, impossible formats --------------------------------------------------


def test_zero_length_audio_on_transcribe_long_and_in_empty_stream_messages(
    stub: pb_grpc.TranscriptionServiceStub,
) -> None:
    error = _error(lambda: _long(stub, b""))
    assert error.code() == INVALID
    assert "empty (0 bytes)" in details(error)
    error = _error(lambda: _stream(stub, [_config(), _audio(b""), _audio(b""), _audio(b"")]))
    assert error.code() == INVALID
    assert "carried 0 ms of audio" in details(error)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_float32_samples_are_invalid_argument(
    stub: pb_grpc.TranscriptionServiceStub, bad: float
) -> None:
    samples = np.zeros(16000, "<f4")
    samples[8000] = bad
    error = _error(lambda: transcribe(stub, samples.tobytes(), encoding=FLOAT32, sample_rate=16000))
    assert error.code() == INVALID
    assert "NaN or infinite" in details(error)
    # In a stream the bad sample comes after a second of good audio.
    messages = [
        _config(encoding=FLOAT32),
        _audio(np.zeros(16000, "<f4").tobytes()),
        _audio(samples.tobytes()),
    ]
    error = _error(lambda: _stream(stub, messages))
    assert error.code() == INVALID
    assert "NaN or infinite" in details(error)


def test_1_hz_raw_and_container_audio_is_invalid_argument(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    error = _error(lambda: transcribe(stub, ONE_SECOND, encoding=LINEAR16, sample_rate=1))
    assert error.code() == INVALID
    assert "sample rate 1 Hz" in details(error)
    one_hz = bytearray(speech_wav)
    one_hz[24:32] = struct.pack("<II", 1, 2)  # sample rate, byte rate
    error = _error(lambda: transcribe(stub, bytes(one_hz)))
    assert error.code() == INVALID
    assert "sample rate 1 Hz" in details(error)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"sample_rate_hertz": 1}, "sample rate 1 Hz"),
        ({"sample_rate_hertz": -16000}, "sample rate -16000 Hz"),
        ({"channel_count": 64}, "streams take 1 or 2 channels"),
        ({"channel_count": -1}, "streams take 1 or 2 channels"),
    ],
    ids=["rate-1", "rate-negative", "channels-64", "channels-negative"],
)
def test_impossible_stream_formats_are_invalid_argument(
    stub: pb_grpc.TranscriptionServiceStub, fmt: dict[str, int], message: str
) -> None:
    error = _error(lambda: _stream(stub, [_config(**fmt), _audio(ONE_SECOND)]))
    assert error.code() == INVALID
    assert message in details(error)


def test_unary_negative_channel_count_is_invalid_argument(
    stub: pb_grpc.TranscriptionServiceStub,
) -> None:
    error = _error(
        lambda: transcribe(stub, ONE_SECOND, encoding=LINEAR16, sample_rate=16000, channels=-1)
    )
    assert error.code() == INVALID
    assert "channel count -1" in details(error)


def test_zero_channels_means_mono_in_both_rpcs(stub: pb_grpc.TranscriptionServiceStub) -> None:
    pcm = np.random.default_rng(3).normal(0, 3000, 16000).astype("<i2").tobytes()
    mono = transcribe(stub, pcm, encoding=LINEAR16, sample_rate=16000, channels=1)
    zero = transcribe(stub, pcm, encoding=LINEAR16, sample_rate=16000, channels=0)
    assert zero.transcript == mono.transcript
    streamed = _stream(stub, [_config(channel_count=0), _audio(pcm)])
    assert streamed[-1].is_final
    assert streamed[-1].metrics.audio_seconds == pytest.approx(1.0)


# --- many streams ------------------------------------------------------------------------------


def test_200_concurrent_streams_over_max_streams_4_are_bounded(
    tdt_checkpoint: Path, tmp_path: Path, speech_wav: bytes
) -> None:
    """Seen from the clients: 200 streams start at once; each sends 2 s of audio (a whole
    first block) and waits for its first partial result or its refusal, and the ones being
    served stay open until every stream has one or the other. Exactly 4 are served together."""
    running = start_server(tdt_checkpoint, tmp_path, "--max-streams", "4")
    try:
        stub = running.stub()
        streams = 200
        rss_before = running.rss_bytes()
        outcomes: Counter[str] = Counter()
        messages: set[str] = set()
        lock = threading.Lock()
        go = threading.Event()
        everyone_answered = threading.Event()
        answered = [0]

        def answer(outcome: str) -> None:
            with lock:
                outcomes[outcome] += 1
                answered[0] += 1
                if answered[0] == streams:
                    everyone_answered.set()

        def one_stream() -> None:
            def requests() -> Iterator[pb.StreamingTranscribeRequest]:
                config = _config()
                config.config.interim_results = True
                yield config
                yield _audio(ONE_SECOND * 2)
                everyone_answered.wait(60)  # a served stream holds its slot until then

            go.wait()
            call = stub.StreamingTranscribe(requests(), timeout=90)
            try:
                first = next(call)
                answer("served" if first.audio_processed_seconds > 0 else "not a partial")
                if list(call)[-1].is_final:
                    with lock:
                        outcomes["final"] += 1
            except grpc.RpcError as error:
                answer(error.code().name)
                with lock:
                    messages.add(details(error))

        threads = [threading.Thread(target=one_stream) for _ in range(streams)]
        for thread in threads:
            thread.start()
        go.set()
        assert everyone_answered.wait(60), outcomes
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), "a stream hung"

        # The 4 served streams were all open at once (none had ended: each waited for every
        # other stream's answer), and every other stream was refused meanwhile.
        assert outcomes == {"served": 4, "final": 4, "RESOURCE_EXHAUSTED": streams - 4}, outcomes
        assert messages == {"4 streams are open, the server's limit; retry in a moment"}
        # Resident memory settles back within 100 MB of where it was: the server trims its
        # heap ~1 s after the last call ends (a busy machine may take a few seconds more).
        settle_by = time.monotonic() + 15
        while running.rss_bytes() - rss_before >= 100e6 and time.monotonic() < settle_by:
            time.sleep(0.5)
        grown = running.rss_bytes() - rss_before
        worker = running.worker_rss_bytes() / 1e6
        assert grown < 100e6, f"+{grown / 1e6:.1f} MB (worker now {worker:.1f} MB)"
        assert_serving(running, speech_wav)
        served = re.findall(r"rpc=StreamingTranscribe .*status=OK", running.log())
        assert len(served) == 4
    finally:
        assert running.stop() == 0, running.log()


@pytest.mark.slow
def test_10000_concurrent_streams_over_max_streams_4_are_bounded(
    tdt_checkpoint: Path, tmp_path: Path, speech_wav: bytes
) -> None:
    """The issue's 10,000 tiny streams, from one asyncio client on one connection.

    The server's own statuses are read from its log: grpc.aio's client, writing a request while
    the server has already ended the call, reports most refusals as INTERNAL "Internal error
    from Core" locally (grpc/grpc#36066: 9,859 of 10,000 here, where the server refused 6,773
    and never saw the rest); the sync client of the test above does not."""
    running = start_server(tdt_checkpoint, tmp_path, "--max-streams", "4")
    client_side = "Internal error from Core"

    async def one(stub: pb_grpc.TranscriptionServiceStub) -> str:
        async def requests() -> AsyncIterator[pb.StreamingTranscribeRequest]:
            yield _config()
            for _ in range(3):
                await asyncio.sleep(0.05)
                yield _audio(ONE_SECOND[:3200])

        try:
            responses = [r async for r in stub.StreamingTranscribe(requests(), timeout=300)]
        except grpc.aio.AioRpcError as error:
            if error.details() == client_side:
                return "client-side INTERNAL"
            return error.code().name
        return "OK" if responses[-1].is_final else "no final"

    async def all_of_them() -> Counter[str]:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.TranscriptionServiceStub(channel)
            return Counter(await asyncio.gather(*(one(stub) for _ in range(10_000))))

    try:
        rss_before = running.rss_bytes()
        outcomes = asyncio.run(all_of_them())
        assert sum(outcomes.values()) == 10_000  # none hung: each call ended
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED", "client-side INTERNAL"}, outcomes
        served = Counter(re.findall(r"rpc=StreamingTranscribe .*?status=([A-Z_]+)", running.log()))
        # Every call the server saw was served or refused; only 4 at a time were served (the
        # streams start together, so later ones find the slots taken). The calls the aio client
        # gave up on locally never reach the handler.
        assert set(served) == {"OK", "RESOURCE_EXHAUSTED"}, served
        assert served["OK"] == outcomes["OK"] >= 4, (served, outcomes)
        assert served.total() <= 10_000
        assert running.rss_bytes() - rss_before < 200e6
        assert_serving(running, speech_wav)
    finally:
        assert running.stop() == 0, running.log()
