"""Assembles the gRPC server (service, health, reflection) and runs it until a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server import __version__
from parakeet_server.api.auth import TokenAuthInterceptor, load_token
from parakeet_server.api.call_metrics import MetricsInterceptor
from parakeet_server.api.drain import DrainGate
from parakeet_server.api.grpc_types import ServerInterceptor
from parakeet_server.api.service import TranscriptionService
from parakeet_server.cache.recordings import RecordingLoader, ResultShape, model_identity
from parakeet_server.cache.store import Caches
from parakeet_server.config import ServerConfig
from parakeet_server.domain import ChunkingConfig
from parakeet_server.errors import ModelLoadError
from parakeet_server.ops.heap import pin_mmap_threshold, release_free_heap
from parakeet_server.ops.memory_report import MemoryReporter
from parakeet_server.ops.proc import resident_bytes
from parakeet_server.ops.prometheus import MetricsEndpoint, ServerMetrics
from parakeet_server.pipeline.live import LiveStreams, StreamPolicy
from parakeet_server.pipeline.unary import UnaryLimits, UnaryTranscriptions
from parakeet_server.workers.protocol import ModelSpec
from parakeet_server.workers.scheduler import BatchPolicy
from parakeet_server.workers.supervisor import RecyclePolicy, Supervisor

if TYPE_CHECKING:
    from parakeet_server.http_api.app import HttpApi

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TranscriptionService"].full_name
_HEALTH_SERVICES = ("", SERVICE_NAME)

# A dictation session may sit silent for minutes between utterances, across NATs and proxies
# that drop idle connections: the server pings idle connections every minute, and lets clients
# ping as often as every 10 s, with or without calls in flight (clients should not go below).
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]

# Once the transcription calls have drained, gRPC gets this long for their last responses to
# leave and for health watchers to hear NOT_SERVING; a call arriving then is cancelled by gRPC.
_TAIL_SECONDS = 1.0
# Buffers from 256 KiB up (decoded audio, request messages) get their own mmap in the server
# process, so they go back to the OS when freed: with glibc's default, rising threshold they
# landed in its heaps and the memory they freed stayed there (measured by bench/soak.py: the
# server's free-but-kept heap grew ~38 MB in a minute of mixed load, its live data flat).
HEAP_MMAP_THRESHOLD = 256 * 1024


class Server:
    """The gRPC server and the model process behind it."""

    def __init__(self, config: ServerConfig) -> None:
        """Raises OSError or ValueError, with the reason, for unusable TLS or token files."""
        self.config = config
        self.credentials = _server_credentials(config)
        token = load_token(config.auth_token_file, os.environ)
        self.supervisor = Supervisor(
            ModelSpec(
                model=config.model,
                dtype=config.dtype,
                blas=config.blas,
                chunking=ChunkingConfig(
                    config.chunk_seconds, config.chunk_overlap_seconds, config.chunk_batch_size
                ),
                log_level=config.log_level,
                log_format=config.log_format,
            ),
            max_pending=config.max_queued_requests,
            recycle=RecyclePolicy(
                max_requests=config.worker_max_requests,
                max_memory_bytes=config.worker_max_memory_mb * 1024 * 1024,
            ),
            on_serving=self._serving,
            batching=BatchPolicy(
                max_batch_size=config.max_batch_size,
                max_batch_wait=config.max_batch_wait_ms / 1000,
            ),
            on_batch=self._batch_done,
            on_drop=lambda reason: self.metrics.dropped.labels(reason).inc(),
        )
        self.last_batch: tuple[int, float] = (0, 0.0)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        # Kept even when not served over HTTP, so the interceptor needs no special case.
        self.metrics = ServerMetrics(
            lambda: self.supervisor.pending,
            lambda: self.streams.worst_lag_seconds(),
            self.supervisor.worker_memory,
        )
        self.metrics_endpoint: MetricsEndpoint | None = None
        # Metrics first, so refused calls are counted too.
        self.drain = DrainGate(on_idle=self._release_free_heap)
        self._last_trim = 0.0
        self._trim_pending = False
        interceptors: list[ServerInterceptor] = [MetricsInterceptor(self.metrics), self.drain]
        if token is not None:
            interceptors.append(TokenAuthInterceptor(token))
        self.auth = token is not None
        # A little headroom over the audio limit for the rest of the request.
        message_limit = config.max_message_bytes + 64 * 1024
        self.grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                ("grpc.so_reuseport", 0),
                *KEEPALIVE,
            ],
        )
        self.caches = Caches.from_config(config)
        self.metrics.caches.register("audio", self.caches.audio)
        self.metrics.caches.register("transcript", self.caches.transcripts)
        recordings = RecordingLoader(
            self.caches,
            ResultShape(
                model_id=model_identity(config.model),
                dtype=config.dtype,
                chunk_seconds=config.chunk_seconds,
                chunk_overlap_seconds=config.chunk_overlap_seconds,
            ),
            on_decode=self.metrics.audio_decodes.inc,
        )
        unary = UnaryTranscriptions(
            self.supervisor,
            recordings,
            UnaryLimits(config.max_message_bytes, config.max_audio_seconds, config.chunk_seconds),
        )
        self.streams = streams = LiveStreams(
            self.supervisor,
            config.max_streams,
            StreamPolicy(
                max_seconds=config.max_stream_seconds,
                idle_timeout_seconds=config.stream_idle_timeout_seconds,
                auto_full_context_seconds=config.auto_full_context_seconds,
                block_seconds=config.stream_block_ms / 1000,
                lookahead_seconds=config.stream_lookahead_ms / 1000,
                left_context_seconds=config.stream_left_context_seconds,
            ),
        )
        self.http: HttpApi | None = None
        if config.http_address:
            # aiohttp is imported only by servers that serve HTTP.
            from parakeet_server.http_api.app import HttpApi, HttpSettings, server_ssl_context

            self.http = HttpApi(
                HttpSettings(
                    address=config.http_address,
                    model=config.model,
                    max_audio_bytes=config.max_message_bytes,
                    token=token,
                    ssl_context=server_ssl_context(
                        config.tls_cert, config.tls_key, config.tls_client_ca
                    )
                    if config.tls_cert and config.tls_key
                    else None,
                ),
                unary,
                self.metrics,
            )
        pb_grpc.add_TranscriptionServiceServicer_to_server(
            TranscriptionService(
                self.supervisor, config, self.caches, unary, streams, lambda: self.last_batch
            ),
            self.grpc,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self.port = 0

    async def start(self) -> int:
        """Listens (health NOT_SERVING), then loads and warms the model (health SERVING).

        Returns the port. Raises ModelLoadError when the model cannot be loaded.
        """
        if self.credentials is None:
            self.port = self.grpc.add_insecure_port(self.config.address)
        else:
            self.port = self.grpc.add_secure_port(self.config.address, self.credentials)
        if self.port == 0:
            raise OSError(f"could not listen on {self.config.address}")
        if self.config.metrics_address:
            self.metrics_endpoint = MetricsEndpoint(self.metrics, self.config.metrics_address)
            log.info("metrics address=%s", self.metrics_endpoint.address)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if self.http is not None:
            # Before the model loads, like gRPC: until then requests get 503.
            await self.http.start()
            log.info(
                "http address=%s tls=%s", self.http.address, "on" if self.config.tls_cert else "off"
            )
        if self.config.port_file:
            _write_port_file(Path(self.config.port_file), self.port)
        log.info(
            "listening address=%s:%d version=%s model=%s tls=%s auth=%s (loading)",
            self.config.host,
            self.port,
            __version__,
            self.config.model,
            _tls_mode(self.config),
            "token" if self.auth else "off",
        )
        started = time.perf_counter()
        info = await self.supervisor.start()
        self.metrics.model_loaded(info.load_seconds, info.warmup_seconds)
        log.info(
            "model loaded model=%s kind=%s dtype=%s device=%s blas=%s params=%d "
            "load=%.2fs warmup=%.2fs rss=%.0fMB worker_rss=%.0fMB",
            info.model_id,
            info.kind,
            info.dtype,
            info.device,
            info.blas or "-",
            info.parameter_count,
            info.load_seconds,
            info.warmup_seconds,
            resident_bytes() / 1e6,
            self.supervisor.worker_resident_bytes() / 1e6,
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "SERVING address=%s:%d ready_in=%.2fs",
            self.config.host,
            self.port,
            time.perf_counter() - started,
        )
        return self.port

    def _release_free_heap(self) -> None:
        """Once no call runs, gives the heap memory that the calls freed back to the OS (on a
        thread: a few ms), at most once a second. glibc keeps freed memory in each thread's
        arena; without this the server's resident memory kept what its busiest moment used
        (bench/soak.py: free-but-kept heap +20 MB over a minute, live data flat)."""
        if self._trim_pending:
            return
        self._trim_pending = True
        delay = max(0.0, self._last_trim + 1.0 - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_pending = False
        if self.drain.running:
            return  # busy again: the next idle time trims
        self._last_trim = time.monotonic()
        asyncio.get_running_loop().run_in_executor(None, release_free_heap)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, give in-flight calls `grace` seconds."""
        self.drain.close()
        if self.http is not None:
            self.http.close()
        await self.health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        started = time.perf_counter()
        if not await self.drain.drained(grace):
            log.warning(
                "shutdown grace over after %.1fs; cancelling calls still running: %d",
                grace,
                self.drain.running,
            )
        remaining = max(0.0, grace - (time.perf_counter() - started))
        if self.http is not None:
            if not await self.http.drained(remaining):
                log.warning("shutdown grace over; cancelling HTTP requests still running")
            await self.http.stop()
            remaining = max(0.0, grace - (time.perf_counter() - started))
        await self.grpc.stop(min(remaining, _TAIL_SECONDS))
        await self.supervisor.close()
        self.close_metrics()

    def close_metrics(self) -> None:
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None

    def _batch_done(self, work: str, size: int, seconds: float) -> None:
        """A batched model call ran (on the model thread): for metrics and GetServerInfo."""
        if work == "stream":
            self.last_batch = (size, seconds)
        self.metrics.observe_batch(work, size, seconds)

    async def _serving(self, serving: bool) -> None:
        """The model worker died (False) or a new one is ready after it (True)."""
        if serving:
            self.metrics.worker_restarts.inc()
            info = self.supervisor.info
            if info is not None:
                self.metrics.model_loaded(info.load_seconds, info.warmup_seconds)
        await self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in _HEALTH_SERVICES:
            await self.health.set(service, status)


def _write_port_file(path: Path, port: int) -> None:
    """Writes the port whole or not at all (a reader never sees half a number)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{port}\n")
    partial.replace(path)


def _tls_mode(config: ServerConfig) -> str:
    if config.tls_client_ca:
        return "mutual"
    return "on" if config.tls_cert else "off"


def _read_pem(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise OSError(f"cannot read {flag} {path}: {error.strerror}") from None


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not (config.tls_cert and config.tls_key):
        return None
    chain = _read_pem("--tls-cert", config.tls_cert)
    key = _read_pem("--tls-key", config.tls_key)
    client_ca = _read_pem("--tls-client-ca", config.tls_client_ca) if config.tls_client_ca else None
    for flag, pem in (("--tls-cert", chain), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if pem is not None and b"-----BEGIN " not in pem:
            raise ValueError(f"{flag} must be a PEM file (-----BEGIN ...); this one is not")
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(config: ServerConfig) -> int:
    """Runs the server until SIGTERM or SIGINT; returns the process exit code."""
    pin_mmap_threshold(HEAP_MMAP_THRESHOLD)
    try:
        server = Server(config)
    except (OSError, ValueError) as error:
        log.error("cannot start: %s", error)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if hasattr(signal, "SIGUSR1"):
        reporter = MemoryReporter(config.memory_report_dir, server.supervisor.worker_memory)
        loop.add_signal_handler(signal.SIGUSR1, reporter.on_signal)
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        try:
            starting.result()
        except ModelLoadError as error:
            log.error("cannot start: %s", error)
            if server.http is not None:
                await server.http.stop()
            await server.grpc.stop(None)
            await server.supervisor.close()
            server.close_metrics()
            return 2
        except OSError as error:
            log.error("cannot start: %s", error)
            server.close_metrics()
            return 2
        await stopping
    else:
        starting.cancel()
    log.info("shutting down grace=%.1fs", config.shutdown_grace_seconds)
    await server.stop()
    log.info("stopped")
    return 0
