"""The OpenAI-style HTTP API, through the official `openai` package and curl, on one real server
(the trained tiny model, so the words are real), next to its gRPC Transcribe."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest

from certs import CertificateAuthority
from conftest import TRAINED_MODEL
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.cache.recordings import RecordingLoader, ResultShape
from parakeet_server.cache.store import Caches
from parakeet_server.config import ServerConfig
from parakeet_server.errors import (
    AudioTooLong,
    InvalidAudio,
    InvalidRequest,
    ModelUnavailable,
    Overloaded,
    ParakeetError,
    RequestTooLarge,
    Unauthenticated,
)
from parakeet_server.http_api.app import HttpApi, HttpSettings, error_response, server_ssl_context
from parakeet_server.ops.prometheus import ServerMetrics
from parakeet_server.pipeline.unary import UnaryLimits, UnaryTranscriptions
from parakeet_server.testing.launcher import RunningServer, start_server
from parakeet_server.workers.protocol import ModelSpec
from parakeet_server.workers.supervisor import Supervisor
from scrape import delta, scrape

TOKEN = "http-test-token"
LIMIT = 2_000_000  # --max-message-bytes: speech.wav (~150 kB) fits, 2.5 MB does not
ROUTE = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One queue place, so that a second request while one runs is refused (429)."""
    running = start_server(
        TRAINED_MODEL,
        tmp_path_factory.mktemp("http"),
        "--http-address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
        "--max-message-bytes",
        str(LIMIT),
        "--max-queued-requests",
        "1",
        env={"PARAKEET_AUTH_TOKEN": TOKEN},
    )
    yield running
    assert running.stop() == 0, running.log()


def _base_url(server: RunningServer) -> str:
    match = server.wait_for(re.compile(r"http address=(\S+)"))
    return f"http://{match.group(1)}/v1"


@pytest.fixture(scope="module")
def client(http_server: RunningServer) -> Iterator[openai.OpenAI]:
    # No retries: each status the server sends must reach the test as it is.
    with openai.OpenAI(api_key=TOKEN, base_url=_base_url(http_server), max_retries=0) as made:
        yield made


def _grpc_text(server: RunningServer, audio: bytes) -> str:
    stub = server.stub()
    response: pb.TranscribeResponse = stub.Transcribe(
        pb.TranscribeRequest(audio=audio),
        timeout=120,
        metadata=(("authorization", f"Bearer {TOKEN}"),),
    )
    return response.transcript.text


def test_openai_client_gets_the_text_transcribe_gives(
    http_server: RunningServer, client: openai.OpenAI, speech_dir: Path
) -> None:
    wav = speech_dir / "speech.wav"
    expected = _grpc_text(http_server, wav.read_bytes())
    assert expected.strip()
    with wav.open("rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-1", file=audio, language="en")
    assert result.text == expected
    # Any model name is accepted; the answer names the model that ran.
    assert result.model_dump()["model"] == str(TRAINED_MODEL)
    log = http_server.log()
    assert re.search(rf"PERF audio=\S+ words=\d+ .* rpc={ROUTE} peer=http:127.0.0.1 ", log), log


def test_openai_client_response_formats(client: openai.OpenAI, speech_dir: Path) -> None:
    wav = speech_dir / "speech.wav"
    text = client.audio.transcriptions.create(model="parakeet", file=wav, response_format="text")
    srt = client.audio.transcriptions.create(model="parakeet", file=wav, response_format="srt")
    vtt = client.audio.transcriptions.create(model="parakeet", file=wav, response_format="vtt")
    verbose = client.audio.transcriptions.create(
        model="parakeet",
        file=wav,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert text.strip() == verbose.text
    assert srt.startswith("1\n00:00:0")
    assert re.search(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt)
    assert vtt.startswith("WEBVTT\n\n00:00:0")
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n", vtt)
    assert verbose.segments
    assert verbose.words
    assert " ".join(segment.text for segment in verbose.segments) == verbose.text
    assert " ".join(word.word for word in verbose.words) == verbose.text
    assert all(w.start <= w.end for w in verbose.words)
    assert 3 < verbose.duration < 10
    # Without word granularity there are no word timestamps (they cost time to compute).
    plain = client.audio.transcriptions.create(
        model="parakeet", file=wav, response_format="verbose_json"
    )
    assert plain.segments
    assert not plain.words


def test_curl_posts_the_form_as_the_api_documents(
    http_server: RunningServer, speech_dir: Path
) -> None:
    wav = speech_dir / "speech.m4a"
    url = _base_url(http_server) + "/audio/transcriptions"
    answered = subprocess.run(
        ["curl", "-sS", "--fail-with-body", url, "-H", f"Authorization: Bearer {TOKEN}",
         "-F", f"file=@{wav}", "-F", "model=whisper-1"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(answered.stdout)["text"] == _grpc_text(http_server, wav.read_bytes())
    refused = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", url, "-F", f"file=@{wav}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    body, status = refused.stdout.rsplit("\n", 1)
    assert status == "401"
    assert json.loads(body)["error"]["type"] == "authentication_error"


def _error_of(raised: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, object]:
    body = raised.value.body
    assert isinstance(body, dict), body
    # openai hands over the inner error object.
    assert set(body) >= {"message", "type", "code"}, body
    return body


def test_errors_are_openai_error_objects_with_the_right_status(
    http_server: RunningServer, client: openai.OpenAI, speech_dir: Path, tmp_path: Path
) -> None:
    wav = speech_dir / "speech.wav"
    base = _base_url(http_server)
    # No token at all: the curl test (the openai package will not send without one).
    with (
        openai.OpenAI(api_key="wrong-token", base_url=base, max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as unauthenticated,
    ):
        stranger.audio.transcriptions.create(model="whisper-1", file=wav)
    assert unauthenticated.value.status_code == 401
    assert _error_of(unauthenticated)["type"] == "authentication_error"

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all " * 100)
    with pytest.raises(openai.BadRequestError) as undecodable:
        client.audio.transcriptions.create(model="whisper-1", file=garbage)
    assert _error_of(undecodable)["code"] == "invalid_audio"

    large = tmp_path / "large.wav"
    large.write_bytes(wav.read_bytes() + b"\0" * LIMIT)
    with pytest.raises(openai.APIStatusError) as too_large:
        client.audio.transcriptions.create(model="whisper-1", file=large)
    assert too_large.value.status_code == 413
    assert "--max-message-bytes" in str(_error_of(too_large)["message"])

    # The openai package checks response_format itself: a plain HTTP client sends a bad one.
    bad_format = httpx.post(
        f"{base}/audio/transcriptions",
        headers={"Authorization": f"Bearer {TOKEN}"},
        files={"file": ("speech.wav", wav.read_bytes())},
        data={"response_format": "yaml"},
        timeout=60,
    )
    assert bad_format.status_code == 400
    assert "response_format" in bad_format.json()["error"]["message"]


def test_a_full_queue_is_429(
    http_server: RunningServer, client: openai.OpenAI, speech_dir: Path, tmp_path: Path
) -> None:
    """A five-minute recording holds the one queue place (over gRPC) while HTTP asks."""
    long_audio = tmp_path / "long.opus"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "60",
         "-i", str(speech_dir / "speech.wav"), "-c:a", "libopus", "-b:a", "12k", str(long_audio)],
        check=True, timeout=120,
    )  # fmt: skip
    stub = http_server.stub()
    calls = stub.TranscribeLong(
        pb.TranscribeLongRequest(audio=long_audio.read_bytes()),
        timeout=300,
        metadata=(("authorization", f"Bearer {TOKEN}"),),
    )
    first = next(calls)  # decoded: the place is held until the last chunk
    assert first.audio_total_seconds > 150
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            client.audio.transcriptions.create(model="whisper-1", file=speech_dir / "speech.wav")
        assert refused.value.status_code == 429
        assert _error_of(refused)["code"] == "queue_full"
    finally:
        calls.cancel()  # the server stops it between chunks and frees the place


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [str(TRAINED_MODEL)]


def test_http_requests_are_counted_in_prometheus(
    http_server: RunningServer, client: openai.OpenAI, speech_dir: Path
) -> None:
    before = scrape(http_server)
    client.audio.transcriptions.create(model="whisper-1", file=speech_dir / "speech.wav")
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"garbage" * 50))
    after = scrape(http_server)
    requests = "parakeet_http_requests_total"
    assert delta(before, after, requests, route=ROUTE, status="200") == 1
    assert delta(before, after, requests, route=ROUTE, status="400") == 1
    audio = delta(before, after, "parakeet_audio_seconds_total", rpc=ROUTE)
    assert 3 < audio < 10


# --- the error table, and the states a subprocess cannot hold still --------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidAudio("x"), 400, "invalid_request_error"),
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (AudioTooLong("x"), 400, "invalid_request_error"),
        (Unauthenticated("x"), 401, "authentication_error"),
        (RequestTooLarge("x"), 413, "invalid_request_error"),
        (Overloaded("x"), 429, "rate_limit_error"),
        (ModelUnavailable("x"), 503, "server_error"),
        (ParakeetError("x"), 500, "server_error"),
    ],
)
def test_each_domain_error_has_its_status(error: ParakeetError, status: int, kind: str) -> None:
    response = error_response(error)
    assert response.status == status
    assert response.text is not None
    assert json.loads(response.text)["error"]["type"] == kind


def _unloaded_api(settings: HttpSettings) -> HttpApi:
    """The HTTP API over the real pipeline of a server whose model is not loaded yet (the
    Supervisor is never started: what a server answers between listening and SERVING)."""
    config = ServerConfig()
    supervisor = Supervisor(ModelSpec(model=settings.model), max_pending=1)
    recordings = RecordingLoader(
        Caches.from_config(config), ResultShape(settings.model, "auto", 30.0, 5.0)
    )
    unary = UnaryTranscriptions(supervisor, recordings, UnaryLimits(LIMIT, 60.0))
    return HttpApi(settings, unary, ServerMetrics(lambda: 0))


async def _post_while_loading(audio: bytes) -> list[tuple[int, str]]:
    """Before the model is loaded, then once the server is shutting down."""
    api = _unloaded_api(HttpSettings("127.0.0.1:0", "some/model", LIMIT))
    await api.start()
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            for closing in (False, True):
                if closing:
                    api.close()
                form = aiohttp.FormData()
                form.add_field("file", audio, filename="speech.wav")
                async with session.post(f"http://{api.address}{ROUTE}", data=form) as response:
                    body = await response.json()
                    answers.append((response.status, body["error"]["message"]))
    finally:
        await api.stop()
    return answers


def test_503_while_the_model_loads_and_while_shutting_down(speech_wav: bytes) -> None:
    (loading, loading_message), (closing, closing_message) = asyncio.run(
        _post_while_loading(speech_wav)
    )
    assert loading == 503
    assert "loading" in loading_message
    assert closing == 503
    assert "shutting down" in closing_message


async def _models_over_https(settings: HttpSettings, ca: Path) -> tuple[int, str]:
    api = _unloaded_api(settings)
    await api.start()
    try:
        context = ssl.create_default_context(cafile=str(ca))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://localhost:{api.port}/v1/models", ssl=context) as response,
        ):
            return response.status, (await response.json())["data"][0]["id"]
    finally:
        await api.stop()


def test_http_is_https_with_the_servers_tls_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    issued = ca.issue("server")
    context = server_ssl_context(str(issued.cert), str(issued.key), None)
    settings = HttpSettings("127.0.0.1:0", "some/model", LIMIT, ssl_context=context)
    assert asyncio.run(_models_over_https(settings, ca.cert_path)) == (200, "some/model")
