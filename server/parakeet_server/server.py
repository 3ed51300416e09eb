"""Assembles the gRPC server (service, health, reflection) and runs it until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from parakeet.v1 import transcription_pb2 as pb
from parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server import __version__
from parakeet_server.cache import Caches
from parakeet_server.config import ServerConfig
from parakeet_server.engine.child import WorkerSpec
from parakeet_server.engine.settings import ChunkingConfig
from parakeet_server.engine.supervisor import RecyclePolicy, Supervisor
from parakeet_server.errors import ModelLoadError
from parakeet_server.metrics import rss_bytes
from parakeet_server.service import TranscriptionService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TranscriptionService"].full_name
_HEALTH_SERVICES = ("", SERVICE_NAME)


class Server:
    """The gRPC server and the model worker behind it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.models = Supervisor(
            WorkerSpec(
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
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        # A little headroom over the audio limit for the rest of the request.
        message_limit = config.max_message_bytes + 64 * 1024
        self.grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.caches = Caches.from_config(config)
        pb_grpc.add_TranscriptionServiceServicer_to_server(
            TranscriptionService(self.models, config, self.caches), self.grpc
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
        self.port = self.grpc.add_insecure_port(self.config.address)
        if self.port == 0:
            raise OSError(f"could not listen on {self.config.address}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        log.info(
            "listening address=%s:%d version=%s model=%s (loading)",
            self.config.host,
            self.port,
            __version__,
            self.config.model,
        )
        started = time.perf_counter()
        info = await self.models.start()
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
            rss_bytes() / 1e6,
            self.models.worker_resident_bytes() / 1e6,
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "SERVING address=%s:%d ready_in=%.2fs",
            self.config.host,
            self.port,
            time.perf_counter() - started,
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, give in-flight calls `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        await self.grpc.stop(grace)
        await self.models.close()

    async def _serving(self, serving: bool) -> None:
        """The model worker died (False) or a new one is ready (True)."""
        await self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in _HEALTH_SERVICES:
            await self.health.set(service, status)


async def serve(config: ServerConfig) -> int:
    """Runs the server until SIGTERM or SIGINT; returns the process exit code."""
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        try:
            starting.result()
        except ModelLoadError as error:
            log.error("cannot start: %s", error)
            await server.grpc.stop(None)
            await server.models.close()
            return 2
        except OSError as error:
            log.error("cannot start: %s", error)
            return 2
        await stopping
    else:
        starting.cancel()
    log.info("shutting down grace=%.1fs", config.shutdown_grace_seconds)
    await server.stop()
    log.info("stopped")
    return 0
