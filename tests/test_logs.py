"""Structured logs: with --log-format json every line is a JSON object, requests with fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import stream, transcribe
from parakeet_server.testing.launcher import start_server


def test_json_log_lines_carry_each_requests_figures_as_fields(
    tdt_checkpoint: Path, tmp_path: Path, speech_wav: bytes, speech_dir: Path
) -> None:
    server = start_server(tdt_checkpoint, tmp_path, "--log-format", "json")
    try:
        stub = server.stub()
        response = transcribe(stub, speech_wav)
        final = stream(stub, (speech_dir / "speech.s16le").read_bytes(), chunk_bytes=32000)[-1]
        with pytest.raises(grpc.RpcError) as refused:
            transcribe(stub, b"not audio" * 50)
    finally:
        assert server.stop() == 0, server.log()
    entries: list[dict[str, Any]] = [json.loads(line) for line in server.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)

    [unary] = [e for e in entries if e.get("request_id") == response.request_id]
    assert unary["rpc"] == "Transcribe"
    assert unary["status"] == "OK"
    assert unary["peer"].startswith("ipv4:127.0.0.1:")
    assert unary["audio_seconds"] == pytest.approx(response.metrics.audio_seconds, abs=1e-3)
    assert unary["words"] == response.metrics.word_count
    assert unary["processing_seconds"] == pytest.approx(
        response.metrics.processing_seconds, abs=1e-4
    )
    assert unary["rtf"] == pytest.approx(response.metrics.real_time_factor, abs=1e-4)
    assert unary["format"] == "wav"
    assert unary["message"].startswith("PERF ")

    [streamed] = [e for e in entries if e.get("rpc") == "StreamingTranscribe"]
    assert streamed["status"] == "OK"
    assert streamed["words"] == final.metrics.word_count
    assert streamed["audio_seconds"] == pytest.approx(final.metrics.audio_seconds, abs=1e-3)
    assert streamed["finalization_seconds"] == pytest.approx(
        final.finalization_latency_seconds, abs=1e-4
    )

    [failed] = [e for e in entries if e.get("status") == "INVALID_ARGUMENT"]
    assert failed["rpc"] == "Transcribe"
    assert failed["error"] == refused.value.details()
    assert len(failed["request_id"]) == 12
