"""Scaling out: two servers behind gRPC's client-side round_robin, and the Envoy example."""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.config import ServerConfig
from parakeet_server.testing.launcher import RunningServer, start_server

ENVOY = Path(__file__).resolve().parent.parent / "deploy" / "envoy.yaml"
SERVICE = "parakeet.v1.TranscriptionService"


@pytest.fixture
def pair(tdt_checkpoint: Path, tmp_path: Path) -> Iterator[list[RunningServer]]:
    servers = [start_server(tdt_checkpoint, tmp_path) for _ in range(2)]
    yield servers
    for running in servers:
        killed = running.process.returncode is not None
        code = running.stop()
        assert killed or code == 0, running.log()


def _balanced(servers: list[RunningServer]) -> grpc.Channel:
    target = "ipv4:" + ",".join(server.address for server in servers)
    return grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])


def _unary_count(server: RunningServer) -> int:
    return len(re.findall(r"PERF .* rpc=Transcribe ", server.log()))


def _stream_count(server: RunningServer) -> int:
    return len(re.findall(r"PERF .* rpc=StreamingTranscribe ", server.log()))


def test_round_robin_spreads_unary_calls_and_a_stream_survives_the_other_servers_death(
    pair: list[RunningServer], speech_wav: bytes, speech_dir: Path
) -> None:
    with _balanced(pair) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.TranscriptionServiceStub(channel)
        for _ in range(8):
            stub.Transcribe(pb.TranscribeRequest(audio=speech_wav), timeout=60, wait_for_ready=True)
        counts = [_unary_count(server) for server in pair]
        assert sum(counts) == 8
        assert min(counts) >= 1, counts

        # A stream: the first 2.5 s of audio, then wait for a partial result.
        pcm = (speech_dir / "speech.s16le").read_bytes()
        split = 16000 * 2 * 5 // 2
        chunks: queue.Queue[bytes | None] = queue.Queue()

        def requests() -> Iterator[pb.StreamingTranscribeRequest]:
            yield pb.StreamingTranscribeRequest(
                config=pb.StreamingConfig(
                    format=pb.AudioFormat(
                        encoding=pb.AudioFormat.ENCODING_LINEAR16,
                        sample_rate_hertz=16000,
                        channel_count=1,
                    ),
                    interim_results=True,
                    finalization_mode=pb.FINALIZATION_MODE_STREAMING,
                )
            )
            while (chunk := chunks.get(timeout=60)) is not None:
                yield pb.StreamingTranscribeRequest(audio=chunk)

        chunks.put(pcm[:split])
        responses = stub.StreamingTranscribe(requests(), timeout=120)
        first = next(responses)
        assert not first.is_final

        # Which server holds it? Ask each directly.
        active = [_active_streams(server) for server in pair]
        assert sorted(active) == [0, 1], active
        host, other = (pair[0], pair[1]) if active[0] == 1 else (pair[1], pair[0])
        other.process.kill()
        other.process.wait(30)

        chunks.put(pcm[split:])
        chunks.put(None)
        rest = list(responses)
        assert rest[-1].is_final
        assert _stream_count(host) == 1
        assert _stream_count(other) == 0

        # With one server gone, unary calls all go to the survivor.
        before = _unary_count(host)
        for _ in range(3):
            stub.Transcribe(pb.TranscribeRequest(audio=speech_wav), timeout=60, wait_for_ready=True)
        assert _unary_count(host) == before + 3


def _active_streams(server: RunningServer) -> int:
    info = server.stub().GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    return int(info.active_streams)


# --- deploy/envoy.yaml (no envoy binary here: its structure is checked instead) --------------


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ENVOY.read_text())
    return loaded


def _one(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [item] = [item for item in items if item.get("name") == name]
    return item


def test_envoy_cluster_speaks_http2_round_robin_with_grpc_health_checks(
    envoy: dict[str, Any],
) -> None:
    cluster = _one(envoy["static_resources"]["clusters"], "parakeet")
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["@type"].endswith("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    assert "http2_protocol_options" in options["explicit_http_config"]
    [check] = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == SERVICE
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(endpoints) >= 2


def test_envoy_routes_suit_long_streams_and_bound_unary_requests(envoy: dict[str, Any]) -> None:
    [listener] = envoy["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    manager = _one(chain["filters"], "envoy.filters.network.http_connection_manager")[
        "typed_config"
    ]
    defaults = ServerConfig()
    # A silent dictation is ended by the server's own idle timeout, not by the proxy.
    assert _seconds(manager["stream_idle_timeout"]) > defaults.stream_idle_timeout_seconds
    assert _seconds(manager["request_timeout"]) == 0
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters[-1] == "envoy.filters.http.router"
    buffer = _one(manager["http_filters"], "envoy.filters.http.buffer")["typed_config"]
    assert int(buffer["max_request_bytes"]) >= defaults.max_message_bytes

    [host] = manager["route_config"]["virtual_hosts"]
    routes = {
        route["match"].get("path", route["match"].get("prefix")): route for route in host["routes"]
    }
    for path in (f"/{SERVICE}/Transcribe", f"/{SERVICE}/TranscribeLong"):
        assert routes[path]["route"]["cluster"] == "parakeet"
        assert "typed_per_filter_config" not in routes[path]
    # Streams (and reflection) must flow through, never be buffered whole.
    for path in (f"/{SERVICE}/StreamingTranscribe", "/"):
        route = routes[path]
        assert route["route"]["cluster"] == "parakeet"
        assert route["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] is True
    for route in routes.values():
        assert _seconds(route["route"]["timeout"]) == 0
        limit = route["route"]["max_stream_duration"]["grpc_timeout_header_max"]
        assert _seconds(limit) > defaults.max_stream_seconds


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])
