"""The gRPC servicer: validate, translate proto <-> domain, and map errors to status codes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server import __version__
from parakeet_server.api.convert import (
    cache_stats_to_proto,
    duration,
    final_to_proto,
    metrics_to_proto,
    partial_to_proto,
    progress_to_proto,
    stream_request_from_proto,
    transcript_to_proto,
    unary_request_from_proto,
)
from parakeet_server.cache.store import Caches
from parakeet_server.config import ServerConfig
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
from parakeet_server.ops.logs import request_fields
from parakeet_server.ops.perf import RequestFigures
from parakeet_server.ops.proc import resident_bytes
from parakeet_server.pipeline.live import LiveStreams, LiveTranscription
from parakeet_server.pipeline.unary import UnaryJob, UnaryTranscriptions, check_size
from parakeet_server.workers.supervisor import Supervisor

log = logging.getLogger("parakeet_server.requests")

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: dict[type[ParakeetError], grpc.StatusCode] = {
    InvalidAudio: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    AudioTooLong: grpc.StatusCode.OUT_OF_RANGE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AudioNotCached: grpc.StatusCode.NOT_FOUND,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}

_MODEL_KINDS = {
    "tdt": pb.MODEL_KIND_TDT,
    "rnnt": pb.MODEL_KIND_RNNT,
    "ctc": pb.MODEL_KIND_CTC,
    "tdt_ctc": pb.MODEL_KIND_TDT_CTC,
}


def _deadline(context: Context) -> float | None:
    """The call's deadline as a time.monotonic() value."""
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


def status_for(error: ParakeetError) -> grpc.StatusCode:
    for kind, code in _STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class TranscriptionService(pb_grpc.TranscriptionServiceServicer):
    """parakeet.v1.TranscriptionService: each RPC turns its proto into a pipeline request, runs
    it, and turns what comes out back into protos; ParakeetErrors become status codes here."""

    def __init__(
        self,
        supervisor: Supervisor,
        config: ServerConfig,
        caches: Caches,
        unary: UnaryTranscriptions,
        streams: LiveStreams,
        last_batch: Callable[[], tuple[int, float]],
    ) -> None:
        """`last_batch()`: the size and model seconds of the last streaming step."""
        self._supervisor = supervisor
        self._config = config
        self._caches = caches
        self._unary = unary
        self._streams = streams
        self._last_batch = last_batch
        self._started = time.monotonic()

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: Context
    ) -> pb.TranscribeResponse:
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        job: UnaryJob | None = None
        try:
            self._log_received(request, context, request_id, "Transcribe")
            unary = unary_request_from_proto(request, _deadline(context))
            async with self._unary.open(unary) as job:
                async for step in job.steps(segments=False):
                    if step.transcript is not None:
                        figures = job.figures(step.transcript, started)
                        self._log_done("Transcribe", request_id, context, job, figures)
                        return pb.TranscribeResponse(
                            transcript=transcript_to_proto(step.transcript),
                            metrics=metrics_to_proto(figures),
                            request_id=request_id,
                        )
            raise AssertionError("the transcription ended without a transcript")
        except ParakeetError as error:
            await self._abort(context, "Transcribe", request_id, status_for(error), str(error), job)
        except asyncio.CancelledError:
            self._log_gone(context, "Transcribe", request_id, job)
            raise
        except Exception:
            await self._internal_error(context, "Transcribe", request_id)

    async def TranscribeLong(
        self, request: pb.TranscribeLongRequest, context: Context
    ) -> AsyncIterator[pb.TranscribeLongResponse]:
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        job: UnaryJob | None = None
        try:
            self._log_received(request, context, request_id, "TranscribeLong")
            unary = unary_request_from_proto(request, _deadline(context))
            async with self._unary.open(unary) as job:
                # The total first, so that a client can show a progress bar from the start.
                yield pb.TranscribeLongResponse(
                    audio_total_seconds=job.audio.duration_seconds, request_id=request_id
                )
                async for step in job.steps(segments=True):
                    response = progress_to_proto(step, request_id)
                    if step.transcript is not None:
                        figures = job.figures(step.transcript, started)
                        self._log_done("TranscribeLong", request_id, context, job, figures)
                        response.is_final = True
                        response.transcript.CopyFrom(transcript_to_proto(step.transcript))
                        response.metrics.CopyFrom(metrics_to_proto(figures))
                    yield response
        except ParakeetError as error:
            await self._abort(
                context, "TranscribeLong", request_id, status_for(error), str(error), job
            )
        except asyncio.CancelledError:
            self._log_gone(context, "TranscribeLong", request_id, job)
            raise
        except Exception:
            await self._internal_error(context, "TranscribeLong", request_id)

    def _log_received(
        self,
        request: pb.TranscribeRequest | pb.TranscribeLongRequest,
        context: Context,
        request_id: str,
        rpc: str,
    ) -> None:
        log.debug(
            "request id=%s rpc=%s received bytes=%d peer=%s",
            request_id,
            rpc,
            len(request.audio),
            context.peer(),
        )

    def _log_done(
        self, rpc: str, request_id: str, context: Context, job: UnaryJob, figures: RequestFigures
    ) -> None:
        log.info(
            "%s id=%s rpc=%s peer=%s format=%s status=OK",
            figures.perf_line(),
            request_id,
            rpc,
            context.peer(),
            job.audio.source_format,
            extra=request_fields(
                rpc, request_id, context.peer(), "OK", figures, format=job.audio.source_format
            ),
        )

    async def StreamingTranscribe(
        self,
        request_iterator: AsyncIterator[pb.StreamingTranscribeRequest],
        context: Context,
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        request_id = uuid.uuid4().hex[:12]
        reader: asyncio.Task[None] | None = None
        try:
            first = await self._next_request(request_iterator)
            kind = first.WhichOneof("request") if first is not None else None
            if first is None or kind != "config":
                raise InvalidRequest(
                    "the first message of a stream must carry a StreamingConfig; "
                    + ("it carried audio" if kind == "audio" else "none arrived")
                )
            config = stream_request_from_proto(first.config)
            async with self._streams.open(config) as live:
                log.debug("request id=%s rpc=StreamingTranscribe opened", request_id)
                reader = asyncio.create_task(self._read_stream(request_iterator, live))
                while (partial := await live.next_partial()) is not None:
                    # Speech events go out whether or not the client asked for partials.
                    if config.interim_results or partial.event is not None:
                        yield partial_to_proto(partial)
                final = await live.finish()
                ended_at = live.ended_at or time.monotonic()
                response = final_to_proto(final, time.monotonic() - ended_at)
                log.info(
                    "%s id=%s rpc=StreamingTranscribe peer=%s mode=%s final=%s blocks=%d "
                    "block_max=%.3fs finalization=%.3fs status=OK",
                    final.figures.perf_line(),
                    request_id,
                    context.peer(),
                    config.mode.value,
                    "full_context" if final.full_context else "streaming",
                    final.blocks,
                    final.block_seconds_max,
                    response.finalization_latency_seconds,
                    extra=request_fields(
                        "StreamingTranscribe",
                        request_id,
                        context.peer(),
                        "OK",
                        final.figures,
                        mode=config.mode.value,
                        finalization_seconds=round(response.finalization_latency_seconds, 4),
                    ),
                )
                yield response
        except ParakeetError as error:
            await self._abort(
                context, "StreamingTranscribe", request_id, status_for(error), str(error)
            )
        except Exception:
            await self._internal_error(context, "StreamingTranscribe", request_id)
        finally:
            if reader is not None:
                reader.cancel()

    async def _next_request(
        self, requests: AsyncIterator[pb.StreamingTranscribeRequest]
    ) -> pb.StreamingTranscribeRequest | None:
        """The next message, None at half-close; DeadlineExceeded after the idle timeout."""
        idle = self._config.stream_idle_timeout_seconds
        try:
            return await asyncio.wait_for(anext(requests), idle)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"no message arrived for {idle:g} s, the server's idle limit for a stream; "
                "keep sending audio, or half-close the stream when the recording ends"
            ) from None

    async def _read_stream(
        self, requests: AsyncIterator[pb.StreamingTranscribeRequest], live: LiveTranscription
    ) -> None:
        try:
            while (request := await self._next_request(requests)) is not None:
                kind = request.WhichOneof("request")
                if kind == "config":
                    raise InvalidRequest(
                        "a StreamingConfig may only be the first message; this stream already "
                        "has one"
                    )
                if kind == "audio":
                    check_size(request.audio, self._config.max_message_bytes)
                    live.add_audio(request.audio)
                    await live.wait_for_room()
            live.end_input()
        except ParakeetError as error:
            live.fail(error)

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        response = pb.GetServerInfoResponse(
            model_id=self._config.model,
            server_version=__version__,
            uptime=duration(time.monotonic() - self._started),
            max_request_bytes=self._config.max_message_bytes,
            max_audio_seconds=self._config.max_audio_seconds,
        )
        info = self._supervisor.info
        current = self._supervisor.current
        if info is not None:
            response.model_kind = _MODEL_KINDS.get(info.kind, pb.MODEL_KIND_UNSPECIFIED)
            response.sample_rate_hertz = info.sample_rate
            response.vocabulary_size = info.vocabulary_size
            response.dtype = info.dtype
            response.warm = current is not None
            response.load_duration.CopyFrom(duration(info.load_seconds))
            response.warmup_duration.CopyFrom(duration(info.warmup_seconds))
            response.device = info.device
            response.blas = info.blas
            response.parameter_count = info.parameter_count
            response.library_versions.update(info.library_versions)
        if current is not None and current.engine is not None:
            memory = current.engine.memory()
            response.mlx_active_memory_bytes = memory.mlx_active
            response.mlx_cache_memory_bytes = memory.mlx_cache
            response.mlx_peak_memory_bytes = memory.mlx_peak
            response.worker_heap_in_use_bytes = memory.heap_in_use
            response.worker_heap_free_bytes = memory.heap_free
            response.worker_pid = current.pid
            response.worker_resident_memory_bytes = current.resident_bytes()
        response.worker_restarts = self._supervisor.restarts
        response.worker_recycles = self._supervisor.recycles
        response.resident_memory_bytes = resident_bytes()
        response.active_streams = self._streams.active
        response.max_streams = self._config.max_streams
        response.max_batch_size = self._config.max_batch_size
        size, seconds = self._last_batch()
        response.last_batch_size = size
        response.last_step_duration.CopyFrom(duration(seconds))
        response.max_stream_lag.CopyFrom(duration(self._streams.worst_lag_seconds()))
        if info is not None:
            schedule = self._streams.policy.schedule(info.frame_seconds)
            frame = info.frame_seconds
            response.stream_block.CopyFrom(duration(schedule.block_frames * frame))
            response.stream_lookahead.CopyFrom(duration(schedule.lookahead_frames * frame))
        response.auto_full_context_limit.CopyFrom(duration(self._config.auto_full_context_seconds))
        response.chunk_length.CopyFrom(duration(self._config.chunk_seconds))
        response.chunk_overlap.CopyFrom(duration(self._config.chunk_overlap_seconds))
        response.audio_cache.CopyFrom(cache_stats_to_proto(self._caches.audio.stats()))
        response.transcript_cache.CopyFrom(cache_stats_to_proto(self._caches.transcripts.stats()))
        return response

    async def _internal_error(self, context: Context, rpc: str, request_id: str) -> NoReturn:
        """A bug, not bad input: logged with its traceback (call from an except block)."""
        log.exception("request id=%s rpc=%s failed unexpectedly", request_id, rpc)
        await self._abort(
            context,
            rpc,
            request_id,
            grpc.StatusCode.INTERNAL,
            f"internal error while transcribing (request id {request_id}); "
            "the server log has the details",
        )

    async def _abort(
        self,
        context: Context,
        rpc: str,
        request_id: str,
        code: grpc.StatusCode,
        message: str,
        job: UnaryJob | None = None,
    ) -> NoReturn:
        self._log_failed(context, rpc, request_id, code.name, message, job)
        await context.abort(code, message)

    def _log_gone(self, context: Context, rpc: str, request_id: str, job: UnaryJob | None) -> None:
        """The call ended under the handler (its deadline passed, or the client cancelled it):
        the work stops here, and the log says how far it got."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            status, message = "DEADLINE_EXCEEDED", "the client's deadline passed"
        else:
            # A client whose deadline passes cancels the call itself, often a moment before
            # the server's own timer (started when the request arrived) goes off.
            status, message = "CANCELLED", "the client cancelled the call"
            if remaining is not None:
                message += f" {remaining:.2f} s before its deadline"
        self._log_failed(context, rpc, request_id, status, message, job)

    def _log_failed(
        self,
        context: Context,
        rpc: str,
        request_id: str,
        status: str,
        message: str,
        job: UnaryJob | None,
    ) -> None:
        """A request's line when it ends without a result; a recording's says how many of its
        chunks were transcribed (`chunks=done/total`)."""
        fields = request_fields(rpc, request_id, context.peer(), status, error=message)
        chunks = ""
        if job is not None:
            fields["fields"]["chunks"] = job.chunks_progress
            chunks = f" chunks={job.chunks_progress}"
        log.info(
            "request id=%s rpc=%s peer=%s status=%s%s message=%r",
            request_id,
            rpc,
            context.peer(),
            status,
            chunks,
            message,
            extra=fields,
        )
