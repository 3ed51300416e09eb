"""One whole recording through the server, without gRPC: limits, decoding, caches, model steps.

The order matters: the cheap checks (message size, a place in the model's queue) come first,
so that a burst of large requests beyond the queue limit is refused before any of it is
decoded; then the audio is decoded (or found in the caches) on a thread; then the model runs it
one batch of chunks per job, so that streams and other requests take turns with a long
recording and a passed deadline stops it between chunks; the transcript is cached at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from parakeet_server.audio.decode import DecodedAudio, Encoding
from parakeet_server.cache.recordings import Recording, RecordingLoader
from parakeet_server.domain import Progress, Transcript, TranscriptionOptions
from parakeet_server.engine.interface import TranscriptionEngine
from parakeet_server.errors import ModelUnavailable, RequestTooLarge
from parakeet_server.ops.perf import RequestFigures
from parakeet_server.workers.process import ModelProcess
from parakeet_server.workers.scheduler import Timed
from parakeet_server.workers.supervisor import Supervisor


@dataclass(frozen=True)
class UnaryRequest:
    """A whole recording to transcribe, as the client sent it."""

    audio: bytes
    encoding: Encoding = Encoding.CONTAINER
    sample_rate: int = 0
    channels: int = 0
    options: TranscriptionOptions = field(default_factory=TranscriptionOptions)
    digest: bytes = b""  # SHA-256 of audio the server may already hold
    deadline: float | None = None  # time.monotonic()


@dataclass(frozen=True)
class UnaryLimits:
    max_message_bytes: int
    max_audio_seconds: float
    chunk_seconds: float = 30.0  # recordings up to this long are one chunk: they batch


class UnaryJob:
    """A decoded request on its way through the model, and what it has cost so far."""

    def __init__(
        self,
        process: ModelProcess,
        engine: TranscriptionEngine,
        recordings: RecordingLoader,
        recording: Recording,
        request: UnaryRequest,
        decode_seconds: float,
        chunk_seconds: float,
    ) -> None:
        self._process = process
        self._chunk_samples = int(chunk_seconds * engine.info.sample_rate)
        self._engine = engine
        self._recordings = recordings
        self.recording = recording
        self._request = request
        self.decode_seconds = decode_seconds
        self.queue_seconds = 0.0
        self.inference_seconds = 0.0
        self.chunks = 1  # the recording's (0: answered from the cache)
        self.chunks_done = 0  # transcribed so far: the request's log line says where it stopped
        self._chunks_known = False  # a long recording's count comes with its first step

    @property
    def audio(self) -> DecodedAudio:
        return self.recording.audio

    async def steps(self, *, segments: bool) -> AsyncIterator[Progress]:
        """The transcription one batch of chunks per model job; the last step carries the
        transcript. A transcript from the cache comes as one final step without the model."""
        known = self.recording.transcript
        if known is not None:
            self.chunks, self._chunks_known = 0, True
            yield self._whole(known)
            return
        samples = self.audio.samples
        if self._engine.info.min_samples <= len(samples) <= self._chunk_samples:
            self._chunks_known = True
            # One chunk: batched with the other short recordings queued with it.
            clip = await self._process.scheduler.run_clip(
                samples, self._request.options, deadline=self._request.deadline, admitted=True
            )
            self._count(clip)
            self.chunks_done = 1
            await asyncio.to_thread(self._recordings.remember, self.recording, clip.value)
            yield self._whole(clip.value)
            return
        steps = self._engine.transcribe_steps(samples, self._request.options, segments=segments)
        try:
            while True:
                timed = await self._process.scheduler.run(
                    lambda _: next(steps, None), deadline=self._request.deadline, admitted=True
                )
                self._count(timed)
                if timed.value is None:
                    return
                self.chunks, self._chunks_known = timed.value.chunks_total, True
                self.chunks_done = timed.value.chunks_done
                if timed.value.transcript is not None:
                    await asyncio.to_thread(
                        self._recordings.remember, self.recording, timed.value.transcript
                    )
                yield timed.value
        finally:
            self._engine.release(steps)

    @property
    def chunks_progress(self) -> str:
        """`done/total` chunks, for log lines ("?" while a long recording's total is unknown)."""
        return f"{self.chunks_done}/{self.chunks if self._chunks_known else '?'}"

    def _count(self, timed: Timed[Any]) -> None:
        self.queue_seconds += timed.queue_seconds
        self.inference_seconds += timed.run_seconds

    def _whole(self, transcript: Transcript) -> Progress:
        """The one step of a recording done at once (from the cache: chunks 0, else 1)."""
        return Progress(
            processed_seconds=self.audio.duration_seconds,
            total_seconds=self.audio.duration_seconds,
            segments=transcript.segments,
            chunks_done=self.chunks,
            chunks_total=self.chunks,
            transcript=transcript,
        )

    def figures(self, transcript: Transcript, started: float) -> RequestFigures:
        """The request's PERF figures; `started` is its time.perf_counter() at arrival."""
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


class UnaryTranscriptions:
    """Opens UnaryJobs on the supervisor's current model process."""

    def __init__(
        self, supervisor: Supervisor, recordings: RecordingLoader, limits: UnaryLimits
    ) -> None:
        self._supervisor = supervisor
        self._recordings = recordings
        self._limits = limits

    @contextlib.asynccontextmanager
    async def open(self, request: UnaryRequest) -> AsyncIterator[UnaryJob]:
        """A decoded job holding its place in the model's queue until the block ends.

        Raises RequestTooLarge or Overloaded before decoding anything; then the decoder's and
        the caches' errors (InvalidAudio, AudioTooLong, AudioNotCached, ...)."""
        check_size(request.audio, self._limits.max_message_bytes)
        async with self._supervisor.lease() as process:
            engine = process.engine
            if engine is None:  # closed between the lease and now
                raise ModelUnavailable("the model worker is restarting; retry in a moment")
            with process.scheduler.admit():
                started = time.perf_counter()
                recording = await asyncio.to_thread(
                    self._recordings.load,
                    request.audio,
                    encoding=request.encoding,
                    sample_rate=request.sample_rate,
                    channels=request.channels,
                    target_rate=engine.info.sample_rate,
                    max_seconds=self._limits.max_audio_seconds,
                    options=request.options,
                    digest=request.digest,
                )
                yield UnaryJob(
                    process,
                    engine,
                    self._recordings,
                    recording,
                    request,
                    decode_seconds=time.perf_counter() - started,
                    chunk_seconds=self._limits.chunk_seconds,
                )


def check_size(audio: bytes, limit: int) -> None:
    """gRPC's own message limit has headroom for the other fields; the audio itself gets none."""
    if len(audio) > limit:
        raise RequestTooLarge(
            f"the message carries {len(audio)} bytes of audio; the server's limit "
            f"(--max-message-bytes) is {limit} bytes"
        )
