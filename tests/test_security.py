"""TLS (real handshakes on loopback) and bearer-token authentication, on real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certs import CertificateAuthority, Issued
from conftest import transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server
from scrape import Samples, delta, scrape, scrape_until

TOKEN = "s3cret-token_for.tests"
Metadata = tuple[tuple[str, str], ...]
GOOD: Metadata = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("server")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def tls_server(
    tdt_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
    server_cert: Issued,
    token_file: Path,
    ca: CertificateAuthority,
) -> Iterator[RunningServer]:
    """TLS with a certificate for 127.0.0.1/localhost, and a token from a file."""
    running = start_server(
        tdt_checkpoint,
        tmp_path_factory.mktemp("tls"),
        *("--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key)),
        *("--auth-token-file", str(token_file)),
        credentials=_credentials(ca.cert_path),
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def auth_server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Plaintext, with the token from PARAKEET_AUTH_TOKEN."""
    running = start_server(
        tdt_checkpoint,
        tmp_path_factory.mktemp("auth"),
        *("--metrics-address", "127.0.0.1:0"),
        env={"PARAKEET_AUTH_TOKEN": TOKEN},
    )
    yield running
    assert running.stop() == 0, running.log()


def _credentials(ca_pem: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


def _secure_stub(
    address: str,
    ca_pem: Path,
    client: Issued | None = None,
) -> tuple[grpc.Channel, pb_grpc.TranscriptionServiceStub]:
    channel = grpc.secure_channel(address, _credentials(ca_pem, client))
    return channel, pb_grpc.TranscriptionServiceStub(channel)


def _config() -> pb.StreamingTranscribeRequest:
    return pb.StreamingTranscribeRequest(
        config=pb.StreamingConfig(
            format=pb.AudioFormat(
                encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000, channel_count=1
            )
        )
    )


def _client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parakeet_client", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# --- TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_client_trusting_the_ca_transcribes_and_streams(
    tls_server: RunningServer,
    ca: CertificateAuthority,
    speech_wav: bytes,
    speech_dir: Path,
    host: str,
) -> None:
    channel, stub = _secure_stub(f"{host}:{tls_server.port}", ca.cert_path)
    with channel:
        response = stub.Transcribe(pb.TranscribeRequest(audio=speech_wav), metadata=GOOD)
        assert response.metrics.audio_seconds > 1
        pcm = (speech_dir / "speech.s16le").read_bytes()
        requests = [_config(), pb.StreamingTranscribeRequest(audio=pcm)]
        responses = list(stub.StreamingTranscribe(iter(requests), metadata=GOOD, timeout=120))
    assert responses[-1].is_final
    assert "tls=on auth=token" in tls_server.log()


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as error:
        tls_server.stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=GOOD, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_ca_fails_the_handshake(
    tls_server: RunningServer, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path, "some other CA")
    channel, stub = _secure_stub(tls_server.address, stranger.cert_path)
    with channel, pytest.raises(grpc.RpcError) as error:
        stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=GOOD, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    tdt_checkpoint: Path, tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    server = start_server(
        tdt_checkpoint,
        tmp_path,
        *("--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key)),
        *("--tls-client-ca", str(ca.cert_path)),
        credentials=_credentials(ca.cert_path, ca.issue("health", server=False)),
    )
    try:
        channel, stub = _secure_stub(server.address, ca.cert_path, ca.issue("client", server=False))
        with channel:
            assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).warm
        channel, stub = _secure_stub(server.address, ca.cert_path)
        with channel, pytest.raises(grpc.RpcError) as error:
            stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "tls=mutual" in server.log()
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-cert", "{cert}"), "TLS needs both --tls-cert and --tls-key"),
        (("--tls-cert", "{missing}", "--tls-key", "{key}"), "cannot read --tls-cert"),
        (("--tls-cert", "{token}", "--tls-key", "{key}"), "--tls-cert must be a PEM file"),
        (("--tls-client-ca", "{cert}"), "needs --tls-cert and --tls-key"),
        (("--auth-token-file", "{missing}"), "cannot read the auth token file"),
        (("--auth-token-file", "{empty}"), "is empty"),
    ],
)
def test_unusable_tls_or_token_settings_stop_the_server_with_the_reason(
    tdt_checkpoint: Path,
    tmp_path: Path,
    server_cert: Issued,
    token_file: Path,
    flags: tuple[str, ...],
    message: str,
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    paths = {
        "cert": server_cert.cert,
        "key": server_cert.key,
        "token": token_file,
        "missing": tmp_path / "nope.pem",
        "empty": empty,
    }
    result = subprocess.run(
        [sys.executable, "-m", "parakeet_server", "--model", str(tdt_checkpoint), "--port", "0"]
        + [flag.format(**paths) for flag in flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


# --- Token authentication ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "this server requires a token"),
        ((("authorization", "Bearer wrong"),), "the bearer token was not accepted"),
        ((("authorization", f"Bearer {TOKEN}x"),), "the bearer token was not accepted"),
        ((("authorization", TOKEN),), "must have the form 'Bearer <token>'"),
    ],
)
def test_missing_or_bad_token_is_unauthenticated_for_unary_and_stream(
    auth_server: RunningServer, speech_wav: bytes, metadata: Metadata, message: str
) -> None:
    stub = auth_server.stub()
    before = scrape(auth_server)
    calls: list[Callable[[], object]] = [
        lambda: stub.Transcribe(pb.TranscribeRequest(audio=speech_wav), metadata=metadata),
        lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata),
        lambda: list(stub.StreamingTranscribe(iter([_config()]), metadata=metadata, timeout=30)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in (error.value.details() or "")
    assert "rpc=StreamingTranscribe peer=ipv4:127.0.0.1" in auth_server.log()

    def refused(samples: Samples, rpc: str) -> float:
        return delta(
            before,
            samples,
            "parakeet_requests_total",
            service="parakeet.v1.TranscriptionService",
            rpc=rpc,
            code="UNAUTHENTICATED",
        )

    rpcs = ("Transcribe", "GetServerInfo", "StreamingTranscribe")
    after = scrape_until(auth_server, lambda samples: all(refused(samples, r) for r in rpcs))
    assert [refused(after, rpc) for rpc in rpcs] == [1, 1, 1]
    assert "status=UNAUTHENTICATED" in auth_server.log()


def test_good_token_is_served_for_unary_and_stream(
    auth_server: RunningServer, speech_wav: bytes, speech_dir: Path
) -> None:
    stub = auth_server.stub()
    response = stub.Transcribe(pb.TranscribeRequest(audio=speech_wav), metadata=GOOD, timeout=120)
    assert response.request_id
    pcm = (speech_dir / "speech.s16le").read_bytes()
    requests = [_config(), pb.StreamingTranscribeRequest(audio=pcm)]
    assert list(stub.StreamingTranscribe(iter(requests), metadata=GOOD, timeout=120))[-1].is_final
    # A bad request with a good token is judged on its merits.
    garbage = pb.TranscribeRequest(audio=b"not audio" * 40)
    with pytest.raises(grpc.RpcError) as error:
        stub.Transcribe(garbage, metadata=GOOD, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_stay_open_without_a_token(auth_server: RunningServer) -> None:
    channel = auth_server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "parakeet.v1.TranscriptionService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {service.name for service in answer.list_services_response.service}
    assert "parakeet.v1.TranscriptionService" in names


def test_servers_without_a_token_need_none(server: RunningServer, speech_wav: bytes) -> None:
    assert transcribe(server.stub(), speech_wav).request_id
    assert "auth=off" in server.log()


# --- parakeet-client ---------------------------------------------------------------------


def test_client_with_tls_ca_and_token_file(
    tls_server: RunningServer,
    ca: CertificateAuthority,
    token_file: Path,
    speech_dir: Path,
) -> None:
    common = ("--server", tls_server.address, "--tls-ca", str(ca.cert_path))
    token = ("--token-file", str(token_file))
    result = _client(*common, *token, "transcribe", str(speech_dir / "speech.wav"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("PERF audio=")
    result = _client(*common, *token, "stream", str(speech_dir / "speech.wav"), "--chunk-ms", "500")
    assert result.returncode == 0, result.stderr
    assert "finalization_latency=" in result.stderr
    refused = _client(*common, "info")
    assert refused.returncode == 1
    assert refused.stderr.startswith("parakeet-client: UNAUTHENTICATED: this server requires")
    plaintext = _client("--server", tls_server.address, *token, "info")
    assert plaintext.returncode == 3
    assert "--tls-ca" in plaintext.stderr


def test_client_token_from_flag_or_environment(auth_server: RunningServer) -> None:
    address = ("--server", auth_server.address)
    assert _client(*address, "--token", TOKEN, "info").returncode == 0
    env = {**os.environ, "PARAKEET_AUTH_TOKEN": TOKEN}
    assert _client(*address, "info", env=env).returncode == 0
    bad = _client(*address, "--token", "nope", "info")
    assert bad.returncode == 1
    assert "UNAUTHENTICATED: the bearer token was not accepted" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_client_reports_an_unreadable_ca_or_token_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    for flags in (("--tls-ca", missing), ("--token-file", missing)):
        result = _client("--server", "127.0.0.1:1", *flags, "info")
        assert result.returncode == 2
        assert f"cannot read {missing}" in result.stderr
