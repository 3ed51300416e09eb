"""Prometheus metrics: scraped over HTTP from a real server after real traffic."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import stream, transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing.launcher import RunningServer
from scrape import Samples, delta, scrape, scrape_until, value


def test_metrics_move_by_exactly_the_traffic_sent(
    metered_server: RunningServer, speech_wav: bytes, speech_dir: Path
) -> None:
    stub = metered_server.stub()
    service = "parakeet.v1.TranscriptionService"
    before = scrape(metered_server)

    unary = transcribe(stub, speech_wav)
    repeated = transcribe(stub, speech_wav)
    assert repeated.metrics.cache_hit
    long_audio = (speech_dir / "speech_8000.wav").read_bytes()
    [long_final] = [
        response
        for response in stub.TranscribeLong(pb.TranscribeLongRequest(audio=long_audio), timeout=120)
        if response.is_final
    ]
    with pytest.raises(grpc.RpcError) as garbage:
        transcribe(stub, b"this is not audio at all" * 100)
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    pcm = (speech_dir / "speech.s16le").read_bytes()
    final = stream(stub, pcm, chunk_bytes=16000)[-1]
    assert final.is_final
    no_config = stub.StreamingTranscribe(iter([pb.StreamingTranscribeRequest(audio=b"\0\0")]))
    with pytest.raises(grpc.RpcError) as streamed_garbage:
        list(no_config)
    assert streamed_garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    requests = "parakeet_requests_total"
    calls = [
        ("TranscribeLong", "OK"),
        ("Transcribe", "OK"),
        ("Transcribe", "INVALID_ARGUMENT"),
        ("StreamingTranscribe", "OK"),
        ("StreamingTranscribe", "INVALID_ARGUMENT"),
    ]

    def counted(after: Samples) -> bool:
        return all(
            delta(before, after, requests, service=service, rpc=rpc, code=code) >= 1
            for rpc, code in calls
        )

    after = scrape_until(metered_server, counted)
    for rpc, code in calls:
        expected = 2 if (rpc, code) == ("Transcribe", "OK") else 1
        assert delta(before, after, requests, service=service, rpc=rpc, code=code) == expected, (
            rpc,
            code,
        )
    assert delta(before, after, requests, service=service, rpc="GetServerInfo", code="OK") == 0

    for rpc, responses in [
        ("Transcribe", [unary.metrics, repeated.metrics]),
        ("TranscribeLong", [long_final.metrics]),
        ("StreamingTranscribe", [final.metrics]),
    ]:
        seconds = delta(before, after, "parakeet_audio_seconds_total", rpc=rpc)
        assert seconds == pytest.approx(sum(m.audio_seconds for m in responses), rel=1e-6)
        assert delta(before, after, "parakeet_processing_seconds_count", rpc=rpc) == len(responses)
        assert delta(before, after, "parakeet_processing_seconds_sum", rpc=rpc) == pytest.approx(
            sum(m.processing_seconds for m in responses), rel=1e-6
        )
        assert delta(before, after, "parakeet_real_time_factor_count", rpc=rpc) == len(responses)
    assert delta(before, after, "parakeet_cache_hits_total", cache="transcript") == 1
    assert value(after, "parakeet_cache_entries", cache="transcript") >= 1
    assert value(after, "parakeet_cache_max_bytes", cache="transcript") > 0
    assert delta(before, after, "parakeet_stream_time_to_final_seconds_count") == 1
    assert delta(before, after, "parakeet_stream_time_to_final_seconds_sum") == pytest.approx(
        final.finalization_latency_seconds, rel=1e-6, abs=1e-9
    )

    assert value(after, "parakeet_in_flight_requests", rpc="StreamingTranscribe") == 0
    assert value(after, "parakeet_in_flight_requests", rpc="Transcribe") == 0
    assert ("parakeet_model_queue_depth", ()) in after
    assert value(after, "parakeet_model_queue_depth") == 0
    assert value(after, "parakeet_model_load_seconds") > 0
    assert value(after, "parakeet_model_warmup_seconds") > 0
    assert ("parakeet_worker_restarts_total", ()) in after
    assert value(after, "parakeet_worker_restarts_total") == 0
    assert value(after, "process_resident_memory_bytes") > 10_000_000


def test_an_open_stream_is_in_flight_until_it_ends(
    metered_server: RunningServer, speech_dir: Path
) -> None:
    pcm = (speech_dir / "speech.s16le").read_bytes()
    chunks: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(
            config=pb.StreamingConfig(
                format=pb.AudioFormat(
                    encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000
                ),
                interim_results=True,
                finalization_mode=pb.FINALIZATION_MODE_STREAMING,
            )
        )
        while (chunk := chunks.get(timeout=60)) is not None:
            yield pb.StreamingTranscribeRequest(audio=chunk)

    chunks.put(pcm[:80000])
    responses = metered_server.stub().StreamingTranscribe(requests(), timeout=120)
    assert not next(responses).is_final
    during = scrape(metered_server)
    chunks.put(None)
    assert list(responses)[-1].is_final

    def ended(samples: Samples) -> bool:
        return value(samples, "parakeet_in_flight_requests", rpc="StreamingTranscribe") == 0

    after = scrape_until(metered_server, ended)
    assert value(during, "parakeet_in_flight_requests", rpc="StreamingTranscribe") == 1
    assert value(after, "parakeet_in_flight_requests", rpc="StreamingTranscribe") == 0


def test_metrics_are_off_by_default(server: RunningServer) -> None:
    assert "metrics address" not in server.log()


def test_a_bad_metrics_address_is_refused_with_the_reason(tdt_checkpoint: Path) -> None:
    result = _server_run(tdt_checkpoint, "--metrics-address", "9464")
    assert result.returncode == 2
    assert "metrics address" in result.stderr
    assert "HOST:PORT" in result.stderr


def test_a_metrics_port_in_use_stops_the_server_with_the_reason(tdt_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _server_run(tdt_checkpoint, "--port", "0", "--metrics-address", address)
    assert result.returncode == 2
    assert f"cannot serve metrics on {address}: Address already in use" in result.stderr


def test_the_metrics_module_does_not_import_mlx() -> None:
    code = (
        "import sys, parakeet_server.ops.prometheus, parakeet_server.api.call_metrics; "
        "assert not [m for m in sys.modules if m.startswith(('mlx', 'parakeet_mlx'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cache_stats_registered_later_are_exported() -> None:
    from parakeet_server.cache.store import CacheStats
    from parakeet_server.ops.prometheus import ServerMetrics

    class Cache:
        def stats(self) -> CacheStats:
            return CacheStats(
                max_bytes=1000,
                bytes=400,
                entries=3,
                hits=7,
                misses=2,
                evictions=1,
                disk_hits=5,
                disk_errors=6,
            )

    metrics = ServerMetrics(lambda: 4)
    metrics.caches.register("transcripts", Cache())
    from prometheus_client import generate_latest

    families = {
        sample.name: sample
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    assert families["parakeet_cache_hits_total"].value == 7
    assert families["parakeet_cache_hits_total"].labels == {"cache": "transcripts"}
    assert families["parakeet_cache_bytes"].value == 400
    assert families["parakeet_cache_max_bytes"].value == 1000
    assert families["parakeet_cache_disk_rejected_total"].value == 0
    # Every field of the cache's figures is exported (disk_errors once was not).
    assert families["parakeet_cache_disk_errors_total"].value == 6
    assert families["parakeet_model_queue_depth"].value == 4


def _server_run(model: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Runs a server that is expected to refuse to start; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "parakeet_server", "--model", str(model), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
