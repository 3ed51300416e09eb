"""The contract as generated clients and grpcurl see it, through server reflection."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from parakeet_server.testing.launcher import RunningServer


def _find_grpcurl() -> str | None:
    """grpcurl as its users install it (`go install`, by scripts/setup --dev into .cache/bin),
    else the PyPI wrapper from the dev extra next to this interpreter, else PATH."""
    for candidate in (
        Path(__file__).resolve().parent.parent / ".cache" / "bin" / "grpcurl",
        Path(sys.executable).parent / "grpcurl",
    ):
        if candidate.exists():
            return str(candidate)
    return shutil.which("grpcurl")


GRPCURL = _find_grpcurl()
pytestmark = pytest.mark.skipif(
    GRPCURL is None, reason="grpcurl comes with scripts/setup --dev (go install, or the dev extra)"
)


def _grpcurl(server: RunningServer, *args: str, data: str | None = None) -> str:
    command = [str(GRPCURL), "-plaintext"]
    if data is not None:
        command += ["-d", "@"]
    result = subprocess.run(
        [*command, server.address, *args], input=data, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_shows_the_service_health_and_reflection(server: RunningServer) -> None:
    services = _grpcurl(server, "list").split()
    assert "parakeet.v1.TranscriptionService" in services
    assert "grpc.health.v1.Health" in services
    assert (
        "grpc.reflection.v1alpha.ServerReflection" in services
    )  # grpcio-reflection serves v1alpha
    methods = _grpcurl(server, "list", "parakeet.v1.TranscriptionService").split()
    assert methods == [
        "parakeet.v1.TranscriptionService.GetServerInfo",
        "parakeet.v1.TranscriptionService.StreamingTranscribe",
        "parakeet.v1.TranscriptionService.Transcribe",
        "parakeet.v1.TranscriptionService.TranscribeLong",
    ]


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        (
            "parakeet.v1.TranscribeRequest",
            [
                "bytes audio = 1;",
                ".parakeet.v1.AudioFormat format = 2;",
                ".parakeet.v1.TranscriptionOptions options = 3;",
            ],
        ),
        (
            "parakeet.v1.AudioFormat",
            [
                ".parakeet.v1.AudioFormat.Encoding encoding = 1;",
                "int32 sample_rate_hertz = 2;",
                "int32 channel_count = 3;",
                "ENCODING_UNSPECIFIED = 0;",
                "ENCODING_LINEAR16 = 1;",
                "ENCODING_FLOAT32 = 2;",
            ],
        ),
        (
            "parakeet.v1.Transcript",
            ["string text = 1;", "repeated .parakeet.v1.Segment segments = 2;"],
        ),
        (
            "parakeet.v1.Segment",
            [
                "string text = 1;",
                ".google.protobuf.Duration start_time = 2;",
                ".google.protobuf.Duration end_time = 3;",
                "float confidence = 4;",
                "repeated .parakeet.v1.Word words = 5;",
            ],
        ),
        (
            "parakeet.v1.Word",
            [
                "string text = 1;",
                ".google.protobuf.Duration start_time = 2;",
                ".google.protobuf.Duration end_time = 3;",
                "float confidence = 4;",
            ],
        ),
        (
            "parakeet.v1.TranscribeResponse",
            [".parakeet.v1.Transcript transcript = 1;", ".parakeet.v1.RequestMetrics metrics = 2;"],
        ),
        (
            "parakeet.v1.RequestMetrics",
            [
                "double audio_seconds = 1;",
                "double processing_seconds = 2;",
                "double real_time_factor = 3;",
                "int32 word_count = 4;",
                "double words_per_second = 5;",
                "bool cache_hit = 6;",
            ],
        ),
        (
            "parakeet.v1.TranscriptionService",
            [
                "rpc Transcribe ( .parakeet.v1.TranscribeRequest ) returns "
                "( .parakeet.v1.TranscribeResponse );",
                "rpc StreamingTranscribe ( stream .parakeet.v1.StreamingTranscribeRequest ) "
                "returns ( stream .parakeet.v1.StreamingTranscribeResponse );",
                "rpc GetServerInfo ( .parakeet.v1.GetServerInfoRequest ) returns "
                "( .parakeet.v1.GetServerInfoResponse );",
                "rpc TranscribeLong ( .parakeet.v1.TranscribeLongRequest ) returns "
                "( stream .parakeet.v1.TranscribeLongResponse );",
            ],
        ),
        (
            "parakeet.v1.StreamingTranscribeRequest",
            [
                "oneof request {",
                ".parakeet.v1.StreamingConfig config = 1;",
                "bytes audio = 2;",
            ],
        ),
        (
            "parakeet.v1.StreamingConfig",
            [
                ".parakeet.v1.AudioFormat format = 1;",
                "bool interim_results = 2;",
                ".parakeet.v1.TranscriptionOptions options = 3;",
                ".parakeet.v1.FinalizationMode finalization_mode = 4;",
            ],
        ),
        (
            "parakeet.v1.StreamingTranscribeResponse",
            [
                "string finalized_text = 1;",
                "string draft_text = 2;",
                "bool is_final = 3;",
                "double audio_processed_seconds = 4;",
                ".parakeet.v1.Transcript transcript = 5;",
                ".parakeet.v1.RequestMetrics metrics = 6;",
                "double finalization_latency_seconds = 7;",
            ],
        ),
        (
            "parakeet.v1.FinalizationMode",
            [
                "FINALIZATION_MODE_UNSPECIFIED = 0;",
                "FINALIZATION_MODE_AUTO = 1;",
                "FINALIZATION_MODE_STREAMING = 2;",
                "FINALIZATION_MODE_FULL_CONTEXT = 3;",
            ],
        ),
        # Issue 14: phrase boosting.
        (
            "parakeet.v1.TranscriptionOptions",
            ["repeated .parakeet.v1.Phrase phrases = 8;"],
        ),
        ("parakeet.v1.Phrase", ["string text = 1;", "float boost = 2;"]),
    ],
)
def test_describe_shows_the_promised_names(
    server: RunningServer, symbol: str, expected: list[str]
) -> None:
    described = _grpcurl(server, "describe", symbol)
    for line in expected:
        assert line in described, described


def test_reflection_serves_the_contract_under_its_proto_file_name(
    server: RunningServer, tmp_path: Path
) -> None:
    # Tools that fetch the contract by file (grpcurl -protoset-out, imports in other files) see the
    # .proto path and package, whatever module path the Python stubs have.
    protoset = tmp_path / "contract.protoset"
    flags = [str(GRPCURL), "-plaintext", "-protoset-out", str(protoset)]
    result = subprocess.run(
        [*flags, server.address, "describe", "parakeet.v1.TranscriptionService"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    fileset = descriptor_pb2.FileDescriptorSet.FromString(protoset.read_bytes())
    files = {f.name: f for f in fileset.file}
    assert set(files) == {"parakeet/v1/transcription.proto", "google/protobuf/duration.proto"}
    assert files["parakeet/v1/transcription.proto"].package == "parakeet.v1"


def test_transcribe_with_base64_wav(server: RunningServer, speech_wav: bytes) -> None:
    request = json.dumps(
        {"audio": base64.b64encode(speech_wav).decode(), "options": {"wordTimestamps": True}}
    )
    response = json.loads(
        _grpcurl(server, "parakeet.v1.TranscriptionService/Transcribe", data=request)
    )
    assert response["transcript"]["segments"][0]["words"]
    assert response["metrics"]["audioSeconds"] > 1


def test_server_info_and_health(server: RunningServer) -> None:
    info = json.loads(_grpcurl(server, "parakeet.v1.TranscriptionService/GetServerInfo"))
    assert info["warm"] is True
    assert info["modelKind"] == "MODEL_KIND_TDT"
    health = json.loads(_grpcurl(server, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


def _json_objects(text: str) -> list[dict[str, Any]]:
    """grpcurl prints each response of a stream as its own (indented) JSON object."""
    decoder = json.JSONDecoder()
    objects, position = [], 0
    while position < len(text.rstrip()):
        while text[position].isspace():
            position += 1
        value, position = decoder.raw_decode(text, position)
        objects.append(value)
    return objects


def test_streaming_transcribe_through_grpcurl_equals_transcribe(
    server: RunningServer, speech_dir: Path
) -> None:
    pcm = (speech_dir / "speech.s16le").read_bytes()
    config = {
        "config": {
            "format": {"encoding": "ENCODING_LINEAR16", "sampleRateHertz": 16000},
            "interimResults": True,
            "finalizationMode": "FINALIZATION_MODE_FULL_CONTEXT",
        }
    }
    chunks = [
        {"audio": base64.b64encode(pcm[start : start + 32000]).decode()}
        for start in range(0, len(pcm), 32000)
    ]
    messages = "\n".join(json.dumps(message) for message in [config, *chunks])
    responses = _json_objects(
        _grpcurl(server, "parakeet.v1.TranscriptionService/StreamingTranscribe", data=messages)
    )
    assert [r.get("isFinal", False) for r in responses].count(True) == 1
    final = responses[-1]
    assert final["isFinal"] is True
    assert final["metrics"]["audioSeconds"] == pytest.approx(len(pcm) / 2 / 16000)
    unary = json.loads(
        _grpcurl(
            server,
            "parakeet.v1.TranscriptionService/Transcribe",
            data=json.dumps(
                {
                    "audio": base64.b64encode(pcm).decode(),
                    "format": {"encoding": "ENCODING_LINEAR16", "sampleRateHertz": 16000},
                }
            ),
        )
    )
    assert final["transcript"] == unary["transcript"]


def test_health_of_the_named_service(server: RunningServer) -> None:
    request = json.dumps({"service": "parakeet.v1.TranscriptionService"})
    health = json.loads(_grpcurl(server, "grpc.health.v1.Health/Check", data=request))
    assert health == {"status": "SERVING"}


def test_a_refused_request_prints_the_status(server: RunningServer) -> None:
    request = json.dumps({"audio": base64.b64encode(b"not audio at all").decode()})
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", "@", server.address,
         "parakeet.v1.TranscriptionService/Transcribe"],
        input=request, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr, result.stderr
