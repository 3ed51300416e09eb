"""The OpenAI-style HTTP API, a second front end over the same pipeline as gRPC.

`POST /v1/audio/transcriptions` (multipart, as OpenAI's audio API) and `GET /v1/models`, served
by aiohttp on the server's own event loop: the same UnaryTranscriptions (limits, queue, caches,
model process), the same bearer token, the PERF log line and the Prometheus metrics. Domain
errors become HTTP statuses and OpenAI's error object in one table, `_ERRORS`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from parakeet_server.config import split_address
from parakeet_server.domain import Transcript, TranscriptionOptions
from parakeet_server.errors import (
    AudioNotCached,
    AudioTooLong,
    DeadlineExceeded,
    InvalidAudio,
    InvalidRequest,
    ModelUnavailable,
    Overloaded,
    ParakeetError,
    RequestTooLarge,
    Unauthenticated,
)
from parakeet_server.http_api.bodies import (
    GRANULARITIES,
    RESPONSE_FORMATS,
    Answer,
    error_body,
    models_body,
    transcription_body,
)
from parakeet_server.ops.logs import request_fields
from parakeet_server.ops.prometheus import ServerMetrics
from parakeet_server.pipeline.unary import UnaryRequest, UnaryTranscriptions

log = logging.getLogger("parakeet_server.requests")

TRANSCRIPTIONS = "/v1/audio/transcriptions"
MODELS = "/v1/models"

# A form field other than the audio (model, language, ...) is a few bytes; more is not a client.
_MAX_FIELD_BYTES = 64 * 1024

# status, OpenAI error type, code
_ERRORS: dict[type[ParakeetError], tuple[int, str, str]] = {
    InvalidAudio: (400, "invalid_request_error", "invalid_audio"),
    InvalidRequest: (400, "invalid_request_error", "invalid_request"),
    AudioTooLong: (400, "invalid_request_error", "audio_too_long"),
    AudioNotCached: (400, "invalid_request_error", "audio_not_cached"),
    Unauthenticated: (401, "authentication_error", "invalid_api_key"),
    RequestTooLarge: (413, "invalid_request_error", "request_too_large"),
    Overloaded: (429, "rate_limit_error", "queue_full"),
    ModelUnavailable: (503, "server_error", "model_unavailable"),
    DeadlineExceeded: (504, "server_error", "deadline_exceeded"),
}

REFUSED = (
    "the server is shutting down and takes no new requests; retry on another server, or on "
    "this one once it is back"
)


def error_response(error: ParakeetError) -> web.Response:
    """The one place a domain error becomes an HTTP status and OpenAI's error object."""
    for kind, (status, kind_name, code) in _ERRORS.items():
        if isinstance(error, kind):
            return web.json_response(error_body(str(error), kind_name, code), status=status)
    return web.json_response(error_body(str(error), "server_error", "internal"), status=500)


@dataclass(frozen=True)
class HttpSettings:
    address: str  # HOST:PORT
    model: str  # reported as the model that transcribes
    max_audio_bytes: int
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpApi:
    """The aiohttp application and its listener; `close` refuses new requests, `stop` waits for
    those in flight and stops listening."""

    def __init__(
        self, settings: HttpSettings, unary: UnaryTranscriptions, metrics: ServerMetrics
    ) -> None:
        self._settings = settings
        self._unary = unary
        self._metrics = metrics
        self._expected = f"Bearer {settings.token}".encode() if settings.token else None
        self._created = int(time.time())
        self._closed = False
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_post(TRANSCRIPTIONS, self._transcriptions)
        self.app.router.add_get(MODELS, self._models)
        # A client that hangs up cancels its transcription between chunks, as a gRPC cancel does.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        self.port = 0

    async def start(self) -> int:
        """Listens; returns the port. Raises OSError with the reason."""
        host, port = split_address(self._settings.address)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._settings.ssl_context)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise OSError(
                f"cannot serve HTTP on {self._settings.address}: {error.strerror}"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    @property
    def address(self) -> str:
        host, _ = self._settings.address.rsplit(":", 1)
        return f"{host}:{self.port}"

    def close(self) -> None:
        """New requests get 503 from now on; those in flight go on."""
        self._closed = True

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        await self._runner.cleanup()

    # --- the middleware: drain gate, token, errors as JSON, metrics ----------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self._metrics.in_flight.labels(route).inc()
        self._running += 1
        self._idle.clear()
        status = 500
        try:
            response = await self._answer(request, handler)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's number for it)
            raise
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()
            self._metrics.in_flight.labels(route).dec()
            self._metrics.http_requests.labels(route, str(status)).inc()

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if self._closed:
                raise ModelUnavailable(REFUSED)
            self._check_token(request)
            return await handler(request)
        except ParakeetError as error:
            log.info(
                "request rpc=%s peer=%s status=%s message=%r",
                request.path,
                _peer(request),
                error_response(error).status,
                str(error),
                extra=request_fields(request.path, "-", _peer(request), type(error).__name__),
            )
            return error_response(error)
        except web.HTTPException as error:  # aiohttp's own: 404, 405, ...
            return web.json_response(
                error_body(error.reason, "invalid_request_error", str(error.status)),
                status=error.status,
            )
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("request id=%s rpc=%s failed unexpectedly", request_id, request.path)
            return web.json_response(
                error_body(
                    f"internal error (request id {request_id}); the server log has the details",
                    "server_error",
                    "internal",
                ),
                status=500,
            )

    def _check_token(self, request: web.Request) -> None:
        if self._expected is None:
            return
        presented = request.headers.get("Authorization", "")
        if not presented:
            raise Unauthenticated(
                "this server requires a token: send the header 'Authorization: Bearer <token>' "
                "(the OpenAI clients' api_key)"
            )
        if not hmac.compare_digest(presented.encode(), self._expected):
            raise Unauthenticated(
                "the bearer token was not accepted; use the token the server was started with "
                "(its --auth-token-file or PARAKEET_AUTH_TOKEN)"
            )

    # --- routes ----------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(models_body(self._settings.model, self._created))

    async def _transcriptions(self, request: web.Request) -> web.Response:
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        audio, fields = await self._read_form(request)
        answer = _answer_of(fields)
        unary = UnaryRequest(
            audio=audio, options=TranscriptionOptions(word_timestamps=answer.words)
        )
        transcript: Transcript | None = None
        async with self._unary.open(unary) as job:
            async for step in job.steps(segments=False):
                transcript = step.transcript or transcript
            if transcript is None:
                raise AssertionError("the transcription ended without a transcript")
            figures = job.figures(transcript, started)
            source_format = job.audio.source_format
            duration = job.audio.duration_seconds
        self._metrics.observe_transcription(
            TRANSCRIPTIONS,
            figures.audio_seconds,
            figures.processing_seconds,
            figures.real_time_factor,
        )
        log.info(
            "%s id=%s rpc=%s peer=%s format=%s response_format=%s status=OK",
            figures.perf_line(),
            request_id,
            TRANSCRIPTIONS,
            _peer(request),
            source_format,
            answer.response_format,
            extra=request_fields(
                TRANSCRIPTIONS,
                request_id,
                _peer(request),
                "OK",
                figures,
                format=source_format,
                response_format=answer.response_format,
            ),
        )
        content_type, body = transcription_body(
            answer, transcript, model=self._settings.model, duration=duration
        )
        headers = {"X-Request-Id": request_id}
        if isinstance(body, dict):
            return web.json_response(body, headers=headers)
        return web.Response(text=body, content_type=content_type, headers=headers)

    async def _read_form(self, request: web.Request) -> tuple[bytes, dict[str, list[str]]]:
        """The `file` part (at most the audio limit, counted as it arrives) and the other
        fields, read by aiohttp's multipart reader."""
        if request.content_type != "multipart/form-data":
            raise InvalidRequest(
                "send the audio as multipart/form-data with a 'file' part (as OpenAI's "
                f"audio API takes it), not {request.content_type or 'no content type'}"
            )
        reader = await request.multipart()
        audio: bytes | None = None
        fields: dict[str, list[str]] = {}
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("nested multipart bodies are not accepted")
            if part.name == "file":
                audio = await _read_limited(part, self._settings.max_audio_bytes, "file")
            else:
                value = await _read_limited(part, _MAX_FIELD_BYTES, part.name or "a field")
                fields.setdefault(part.name or "", []).append(value.decode(errors="replace"))
        if not audio:
            raise InvalidRequest("the form has no 'file' part, or it is empty")
        return audio, fields


async def _read_limited(part: BodyPartReader, limit: int, name: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            raise RequestTooLarge(
                f"the form's {name} part is over the server's limit of {limit} bytes"
                + (" (--max-message-bytes)" if name == "file" else "")
            )
    return bytes(data)


def _answer_of(fields: dict[str, list[str]]) -> Answer:
    response_format = (fields.get("response_format") or ["json"])[-1] or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}"
        )
    asked = [
        *fields.get("timestamp_granularities[]", []),
        *fields.get("timestamp_granularities", []),
    ]
    for granularity in asked:
        if granularity not in GRANULARITIES:
            raise InvalidRequest(
                f"timestamp_granularities {granularity!r} is not one of {', '.join(GRANULARITIES)}"
            )
    return Answer(
        response_format=response_format,
        granularities=frozenset(asked or ["segment"]),
        language=(fields.get("language") or [""])[-1],
    )


def _peer(request: web.Request) -> str:
    return f"http:{request.remote or '-'}"


def server_ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """HTTPS with the gRPC server's certificate (and its client CA for mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
