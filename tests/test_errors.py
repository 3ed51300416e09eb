"""Bad input gets the right status and a message naming the problem; the server keeps serving."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import details, stream, transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server

LINEAR16 = pb.AudioFormat.ENCODING_LINEAR16
FLOAT32 = pb.AudioFormat.ENCODING_FLOAT32


def _silence(seconds: float, rate: int = 16000) -> bytes:
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()


@pytest.mark.parametrize(
    ("audio", "fmt", "options", "code", "message"),
    [
        (b"", {}, {}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (b"this is not audio at all" * 100, {}, {}, grpc.StatusCode.INVALID_ARGUMENT, "WAV"),
        (_silence(1), {"encoding": LINEAR16}, {}, grpc.StatusCode.INVALID_ARGUMENT, "sample rate"),
        (
            _silence(1),
            {"encoding": LINEAR16, "sample_rate": -16000},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "sample rate",
        ),
        (
            _silence(1),
            {"encoding": LINEAR16, "sample_rate": 10_000_000},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "sample rate",
        ),
        (
            _silence(1),
            {"encoding": LINEAR16, "sample_rate": 16000, "channels": 64},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "channel",
        ),
        (
            _silence(1) + b"\x00",
            {"encoding": LINEAR16, "sample_rate": 16000},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "whole number of frames",
        ),
        (
            np.full(16000, np.nan, dtype="<f4").tobytes(),
            {"encoding": FLOAT32, "sample_rate": 16000},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            _silence(0.01),
            {"encoding": LINEAR16, "sample_rate": 16000},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "at least 80 ms",
        ),
        (
            _silence(1),
            {"encoding": 7, "sample_rate": 16000},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "encoding",
        ),
        (
            _silence(1),
            {"encoding": LINEAR16, "sample_rate": 16000},
            {"beam_size": 1000},
            grpc.StatusCode.INVALID_ARGUMENT,
            "beam_size",
        ),
        (
            _silence(1),
            {"encoding": LINEAR16, "sample_rate": 16000},
            {"patience": 0.5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "patience",
        ),
        (
            _silence(1),
            {"encoding": LINEAR16, "sample_rate": 16000},
            {"duration_reward": 3.0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "duration_reward",
        ),
    ],
    ids=[
        "empty",
        "garbage",
        "rate-missing",
        "rate-negative",
        "rate-absurd",
        "channels-64",
        "half-sample",
        "nan",
        "shorter-than-a-frame",
        "unknown-encoding",
        "beam-too-wide",
        "patience",
        "duration-reward",
    ],
)
def test_bad_requests_are_invalid_argument(
    server: RunningServer,
    stub: pb_grpc.TranscriptionServiceStub,
    speech_wav: bytes,
    audio: bytes,
    fmt: dict[str, int],
    options: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    logged = len(server.log())
    with pytest.raises(grpc.RpcError) as raised:
        transcribe(stub, audio, **fmt, **options)  # type: ignore[arg-type]
    assert raised.value.code() == code, raised.value.details()
    assert message.lower() in details(raised.value).lower()
    # ... and the server still serves, and says in its log what went wrong: this request's
    # line, with the status and the message the client got.
    assert transcribe(stub, speech_wav).transcript.segments
    said = re.escape(repr(details(raised.value)))
    line = rf"rpc=Transcribe .*status={code.name}( chunks=\S+)? message={said}"
    assert re.search(line, server.log()[logged:]), server.log()[logged:]


def test_request_over_the_size_limit_is_resource_exhausted(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    too_big = _silence(120)  # 3.84 MB > the fixture's 3,000,000-byte limit
    with pytest.raises(grpc.RpcError) as raised:
        transcribe(stub, too_big, encoding=LINEAR16, sample_rate=16000)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details(raised.value)
    assert transcribe(stub, speech_wav).transcript.segments


def test_audio_over_the_duration_limit_is_out_of_range(
    tdt_checkpoint: Path, tmp_path: Path
) -> None:
    running = start_server(tdt_checkpoint, tmp_path, "--max-audio-seconds", "2")
    try:
        with pytest.raises(grpc.RpcError) as raised:
            transcribe(running.stub(), _silence(3), encoding=LINEAR16, sample_rate=16000)
        assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "the audio is 3.0 s long; the limit is 2 s" in details(raised.value)
        ok = transcribe(running.stub(), _silence(1.5), encoding=LINEAR16, sample_rate=16000)
        assert ok.metrics.audio_seconds == pytest.approx(1.5)
    finally:
        assert running.stop() == 0


def test_ctc_model_refuses_beam_search(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    running = start_server(checkpoints["ctc"], tmp_path)
    try:
        stub = running.stub()
        audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype("<f4").tobytes()
        greedy = transcribe(stub, audio, encoding=FLOAT32, sample_rate=16000)
        assert greedy.metrics.audio_seconds == pytest.approx(1.0)
        with pytest.raises(grpc.RpcError) as raised:
            transcribe(
                stub,
                audio,
                encoding=FLOAT32,
                sample_rate=16000,
                decoding_method=pb.DECODING_METHOD_BEAM,
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "CTC" in details(raised.value)
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert info.model_kind == pb.MODEL_KIND_CTC
    finally:
        assert running.stop() == 0


_BAD_PHRASES = [
    ([pb.Phrase(text="", boost=5)], "options.phrases[0].text is empty"),
    ([pb.Phrase(text="ok", boost=5), pb.Phrase(text="x" * 101, boost=5)], "[1].text is 101"),
    ([pb.Phrase(text="ok")], "phrases[0].boost ('ok') must be greater than 0"),
    ([pb.Phrase(text="ok", boost=-1)], "phrases[0].boost"),
    ([pb.Phrase(text="ok", boost=float("nan"))], "not nan"),
    ([pb.Phrase(text="ok", boost=20.5)], "at most 20"),
    ([pb.Phrase(text="ok", boost=5)] * 1001, "1001 phrases; at most 1000"),
    # The checkpoint's vocabulary has letters and a few marks: no piece writes a digit.
    ([pb.Phrase(text="ok", boost=5), pb.Phrase(text="route 66", boost=5)], "phrases[1] 'route 66'"),
]


@pytest.mark.parametrize(("phrases", "message"), _BAD_PHRASES)
def test_bad_phrases_are_invalid_argument_on_every_rpc(
    stub: pb_grpc.TranscriptionServiceStub,
    speech_wav: bytes,
    phrases: list[pb.Phrase],
    message: str,
) -> None:
    """Phrase boosting's limits (and what the model cannot spell) name the phrase, for
    Transcribe, TranscribeLong and a stream's config; the server goes on serving."""
    options = pb.TranscriptionOptions(phrases=phrases)
    calls: dict[str, Callable[[], object]] = {
        "Transcribe": lambda: stub.Transcribe(
            pb.TranscribeRequest(audio=speech_wav, options=options), timeout=60
        ),
        "TranscribeLong": lambda: list(
            stub.TranscribeLong(pb.TranscribeLongRequest(audio=speech_wav, options=options))
        ),
        # Refused at the config, before any audio (none is sent).
        "StreamingTranscribe": lambda: stream(stub, b"", phrases=phrases),
    }
    for rpc, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, raised.value)
        assert message in details(raised.value), (rpc, details(raised.value))
    fine = [pb.Phrase(text="ok", boost=5)]
    assert transcribe(stub, speech_wav, phrases=fine).transcript.segments
    assert stream(stub, _silence(1), phrases=fine)[-1].is_final
