"""The contract as generated clients and grpcurl see it, through server reflection."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RunningServer

# The dev extra installs grpcurl next to this interpreter; a venv need not be on PATH.
_BESIDE = Path(sys.executable).parent / "grpcurl"
GRPCURL = str(_BESIDE) if _BESIDE.exists() else shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(
    GRPCURL is None, reason="grpcurl comes with the dev extra (scripts/setup --dev)"
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
    methods = _grpcurl(server, "list", "parakeet.v1.TranscriptionService").split()
    assert methods == [
        "parakeet.v1.TranscriptionService.GetServerInfo",
        "parakeet.v1.TranscriptionService.StreamingTranscribe",
        "parakeet.v1.TranscriptionService.Transcribe",
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
            ],
        ),
    ],
)
def test_describe_shows_the_promised_names(
    server: RunningServer, symbol: str, expected: list[str]
) -> None:
    described = _grpcurl(server, "describe", symbol)
    for line in expected:
        assert line in described, described


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
