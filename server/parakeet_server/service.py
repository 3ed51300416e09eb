"""The gRPC servicer: validate, translate proto <-> domain, and map errors to status codes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server import __version__
from parakeet_server.audio import DecodedAudio
from parakeet_server.cache import Caches
from parakeet_server.config import ServerConfig
from parakeet_server.convert import (
    cache_stats_to_proto,
    duration,
    encoding_from_proto,
    final_to_proto,
    metrics_to_proto,
    options_from_proto,
    partial_to_proto,
    progress_to_proto,
    stream_config_from_proto,
    transcript_to_proto,
)
from parakeet_server.engine.model import ModelInfo
from parakeet_server.engine.remote import RemoteEngine
from parakeet_server.engine.settings import StreamingSettings
from parakeet_server.engine.supervisor import Supervisor, WorkerProcess
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
)
from parakeet_server.logs import request_fields
from parakeet_server.metrics import RequestFigures, rss_bytes
from parakeet_server.recordings import Recording, RecordingLoader, ResultShape, model_identity
from parakeet_server.streams import LiveTranscription, StreamLimits, StreamSlots
from parakeet_server.transcript import Progress, Transcript, TranscriptionOptions

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
}

_MODEL_KINDS = {
    "tdt": pb.MODEL_KIND_TDT,
    "rnnt": pb.MODEL_KIND_RNNT,
    "ctc": pb.MODEL_KIND_CTC,
    "tdt_ctc": pb.MODEL_KIND_TDT_CTC,
}


@dataclass
class _Job:
    """A decoded unary request on its way through the model, and what it has cost so far."""

    model: WorkerProcess
    recording: Recording
    options: TranscriptionOptions
    deadline: float | None
    decode_seconds: float
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    chunks: int = 1

    @property
    def audio(self) -> DecodedAudio:
        return self.recording.audio

    def figures(self, transcript: Transcript, started: float) -> RequestFigures:
        return RequestFigures(
            audio_seconds=self.audio.duration_seconds,
            processing_seconds=time.perf_counter() - started,
            word_count=transcript.word_count,
            decode_seconds=self.decode_seconds,
            queue_seconds=self.queue_seconds,
            inference_seconds=self.inference_seconds,
            chunk_count=self.chunks,
            cache_hit=self.recording.transcript is not None,
            audio_cache_hit=self.recording.audio_cache_hit,
        )


def _engine_of(model: WorkerProcess) -> RemoteEngine:
    engine = model.engine
    if engine is None:  # closed between the lease and now
        raise ModelUnavailable("the model worker is restarting; retry in a moment")
    return engine


def status_for(error: ParakeetError) -> grpc.StatusCode:
    for kind, code in _STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class TranscriptionService(pb_grpc.TranscriptionServiceServicer):
    """parakeet.v1.TranscriptionService over one ModelWorker."""

    def __init__(self, models: Supervisor, config: ServerConfig, caches: Caches) -> None:
        self._models = models
        self._config = config
        self._caches = caches
        self._recordings = RecordingLoader(
            caches,
            ResultShape(
                model_id=model_identity(config.model),
                dtype=config.dtype,
                chunk_seconds=config.chunk_seconds,
                chunk_overlap_seconds=config.chunk_overlap_seconds,
            ),
        )
        self._started = time.monotonic()
        self._streams = StreamSlots(config.max_streams)
        self._limits: StreamLimits | None = None

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: Context
    ) -> pb.TranscribeResponse:
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        try:
            return await self._transcribe(request, context, request_id, started)
        except ParakeetError as error:
            await self._abort(context, "Transcribe", request_id, status_for(error), str(error))
        except Exception:
            await self._internal_error(context, "Transcribe", request_id)

    async def _transcribe(
        self,
        request: pb.TranscribeRequest,
        context: Context,
        request_id: str,
        started: float,
    ) -> pb.TranscribeResponse:
        async with self._models.lease() as model:
            job = await self._decode(request, context, request_id, "Transcribe", model)
            async for step in self._steps(job, segments=False):
                if step.transcript is not None:
                    figures = job.figures(step.transcript, started)
                    self._log_done("Transcribe", request_id, context, job, figures)
                    return pb.TranscribeResponse(
                        transcript=transcript_to_proto(step.transcript),
                        metrics=metrics_to_proto(figures),
                        request_id=request_id,
                    )
        raise AssertionError("the transcription ended without a transcript")

    async def TranscribeLong(
        self, request: pb.TranscribeLongRequest, context: Context
    ) -> AsyncIterator[pb.TranscribeLongResponse]:
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        try:
            async with self._models.lease() as model:
                job = await self._decode(request, context, request_id, "TranscribeLong", model)
                # The total first, so that a client can show a progress bar from the start.
                yield pb.TranscribeLongResponse(
                    audio_total_seconds=job.audio.duration_seconds, request_id=request_id
                )
                async for step in self._steps(job, segments=True):
                    response = progress_to_proto(step, request_id)
                    if step.transcript is not None:
                        figures = job.figures(step.transcript, started)
                        self._log_done("TranscribeLong", request_id, context, job, figures)
                        response.is_final = True
                        response.transcript.CopyFrom(transcript_to_proto(step.transcript))
                        response.metrics.CopyFrom(metrics_to_proto(figures))
                    yield response
        except ParakeetError as error:
            await self._abort(context, "TranscribeLong", request_id, status_for(error), str(error))
        except Exception:
            await self._internal_error(context, "TranscribeLong", request_id)

    async def _decode(
        self,
        request: pb.TranscribeRequest | pb.TranscribeLongRequest,
        context: Context,
        request_id: str,
        rpc: str,
        model: WorkerProcess,
    ) -> _Job:
        """Decodes the request's audio (the first part of every unary transcription)."""
        engine = _engine_of(model)
        log.debug(
            "request id=%s rpc=%s received bytes=%d peer=%s",
            request_id,
            rpc,
            len(request.audio),
            context.peer(),
        )
        self._check_size(request.audio)
        options = options_from_proto(request.options)
        encoding = encoding_from_proto(request.format.encoding)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        started = time.perf_counter()
        recording = await asyncio.to_thread(
            self._recordings.load,
            request.audio,
            encoding=encoding,
            sample_rate=request.format.sample_rate_hertz,
            channels=request.format.channel_count,
            target_rate=engine.info.sample_rate,
            max_seconds=self._config.max_audio_seconds,
            options=options,
            digest=request.audio_sha256,
        )
        return _Job(
            model, recording, options, deadline, decode_seconds=time.perf_counter() - started
        )

    async def _steps(self, job: _Job, *, segments: bool) -> AsyncIterator[Progress]:
        """Runs the transcription one batch of chunks per model job, so that streams and other
        requests take turns with a long recording, and a passed deadline stops it early.

        A transcript from the cache comes as one final step without the model."""
        known = job.recording.transcript
        if known is not None:
            job.chunks = 0
            yield Progress(
                processed_seconds=job.audio.duration_seconds,
                total_seconds=job.audio.duration_seconds,
                segments=known.segments,
                chunks_done=0,
                chunks_total=0,
                transcript=known,
            )
            return
        engine = _engine_of(job.model)
        steps = engine.transcribe_steps(job.audio.samples, job.options, segments=segments)
        try:
            while True:
                timed = await job.model.worker.run(
                    lambda _: next(steps, None), deadline=job.deadline
                )
                job.queue_seconds += timed.queue_seconds
                job.inference_seconds += timed.run_seconds
                if timed.value is None:
                    return
                job.chunks = timed.value.chunks_total
                if timed.value.transcript is not None:
                    await asyncio.to_thread(
                        self._recordings.remember, job.recording, timed.value.transcript
                    )
                yield timed.value
        finally:
            engine.release(steps)

    def _log_done(
        self, rpc: str, request_id: str, context: Context, job: _Job, figures: RequestFigures
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
        live: LiveTranscription | None = None
        reader: asyncio.Task[None] | None = None
        try:
            first = await self._next_request(request_iterator)
            kind = first.WhichOneof("request") if first is not None else None
            if first is None or kind != "config":
                raise InvalidRequest(
                    "the first message of a stream must carry a StreamingConfig; "
                    + ("it carried audio" if kind == "audio" else "none arrived")
                )
            config = stream_config_from_proto(first.config)
            async with self._models.lease() as model, self._streams.hold():
                engine = _engine_of(model)
                limits = self._stream_limits(engine.info)
                live = LiveTranscription(model.worker, engine, config, limits)
                log.debug("request id=%s rpc=StreamingTranscribe opened", request_id)
                reader = asyncio.create_task(self._read_stream(request_iterator, live))
                while (partial := await live.next_partial()) is not None:
                    if config.interim_results:
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
            if live is not None:
                live.close()

    def _check_size(self, audio: bytes) -> None:
        # gRPC's own limit has headroom for the other fields; the audio itself gets none.
        limit = self._config.max_message_bytes
        if len(audio) > limit:
            raise RequestTooLarge(
                f"the message carries {len(audio)} bytes of audio; the server's limit "
                f"(--max-message-bytes) is {limit} bytes"
            )

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
                    self._check_size(request.audio)
                    live.add_audio(request.audio)
                    await live.wait_for_room()
            live.end_input()
        except ParakeetError as error:
            live.fail(error)

    def _stream_limits(self, info: ModelInfo) -> StreamLimits:
        if self._limits is None:
            frame = info.frame_seconds
            config = self._config
            self._limits = StreamLimits(
                max_seconds=config.max_stream_seconds,
                idle_timeout_seconds=config.stream_idle_timeout_seconds,
                auto_full_context_seconds=config.auto_full_context_seconds,
                settings=StreamingSettings(
                    block_frames=max(1, round(config.stream_block_ms / 1000 / frame)),
                    lookahead_frames=round(config.stream_lookahead_ms / 1000 / frame),
                    left_context_frames=max(1, round(config.stream_left_context_seconds / frame)),
                ),
            )
        return self._limits

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
        info = self._models.info
        current = self._models.current
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
            active, cached = current.engine.memory()
            response.mlx_active_memory_bytes = active
            response.mlx_cache_memory_bytes = cached
            response.worker_pid = current.pid
            response.worker_resident_memory_bytes = current.resident_bytes()
        response.worker_restarts = self._models.restarts
        response.worker_recycles = self._models.recycles
        response.resident_memory_bytes = rss_bytes()
        response.active_streams = self._streams.active
        response.max_streams = self._config.max_streams
        if info is not None:
            settings = self._stream_limits(info).settings
            frame = info.frame_seconds
            response.stream_block.CopyFrom(duration(settings.block_frames * frame))
            response.stream_lookahead.CopyFrom(duration(settings.lookahead_frames * frame))
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
    ) -> NoReturn:
        log.info(
            "request id=%s rpc=%s peer=%s status=%s message=%r",
            request_id,
            rpc,
            context.peer(),
            code.name,
            message,
            extra=request_fields(rpc, request_id, context.peer(), code.name, error=message),
        )
        await context.abort(code, message)
