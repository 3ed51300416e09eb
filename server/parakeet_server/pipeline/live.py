"""Live transcription streams on top of the model process; no gRPC, no MLX.

Audio arrives in pieces of any size; it is converted at once (cheap), and whenever a whole
encoder block (plus look-ahead) is available a job on the model thread encodes and decodes it.
Blocks are fixed by audio position, so results do not depend on message sizes or pacing, and
streams interleave fairly with each other and with unary requests on the one model thread.
With endpointing, each step's tokens also go to the stream's Utterances (utterances.py), whose
speech events come out as partials of their own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from parakeet_server.audio.decode import Encoding
from parakeet_server.audio.pcm_stream import PcmStream
from parakeet_server.audio.vad import SpeechDetector
from parakeet_server.domain import (
    BlockResult,
    BlockSchedule,
    DecodingMethod,
    Transcript,
    TranscriptionOptions,
)
from parakeet_server.engine.interface import TranscriptionEngine
from parakeet_server.errors import AudioTooLong, InvalidRequest, ModelUnavailable, Overloaded
from parakeet_server.ops.perf import RequestFigures
from parakeet_server.pipeline.endpointing import EndpointRules
from parakeet_server.pipeline.utterances import Happening, SpeechEvent, Utterance, Utterances
from parakeet_server.workers.scheduler import ModelScheduler, Timed
from parakeet_server.workers.supervisor import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")


BACKLOG_SECONDS = 10.0


class FinalizationMode(enum.Enum):
    AUTO = "auto"
    STREAMING = "streaming"
    FULL_CONTEXT = "full_context"


@dataclass(frozen=True)
class StreamRequest:
    """What the client declared in its first message (its StreamingConfig)."""

    encoding: Encoding
    sample_rate: int
    channels: int
    interim_results: bool = True
    options: TranscriptionOptions = field(default_factory=TranscriptionOptions)
    mode: FinalizationMode = FinalizationMode.AUTO
    endpointing: EndpointRules | None = None  # None: no utterances, no speech events


@dataclass(frozen=True)
class StreamPolicy:
    """Server-wide stream limits, and the streaming encoder's block schedule in seconds."""

    max_seconds: float = 3600.0
    idle_timeout_seconds: float = 30.0
    auto_full_context_seconds: float = 30.0
    block_seconds: float = 1.28
    lookahead_seconds: float = 0.64
    left_context_seconds: float = 10.0

    def schedule(self, frame_seconds: float) -> BlockSchedule:
        """The block schedule in encoder frames of `frame_seconds` each."""
        return BlockSchedule(
            block_frames=max(1, round(self.block_seconds / frame_seconds)),
            lookahead_frames=round(self.lookahead_seconds / frame_seconds),
            left_context_frames=max(1, round(self.left_context_seconds / frame_seconds)),
        )


@dataclass(frozen=True)
class Partial:
    finalized_text: str
    draft_text: str
    audio_processed_seconds: float
    # With endpointing: a speech event, where in the audio, and the utterance it closes.
    event: SpeechEvent | None = None
    event_offset: float = 0.0
    utterance: Utterance | None = None


@dataclass(frozen=True)
class Final:
    finalized_text: str
    transcript: Transcript
    figures: RequestFigures
    full_context: bool
    blocks: int
    block_seconds_max: float


class LiveTranscription:
    """The state of one stream: converted audio, the streaming session, the texts so far."""

    def __init__(
        self,
        scheduler: ModelScheduler[Any],
        engine: TranscriptionEngine,
        config: StreamRequest,
        limits: StreamPolicy,
    ) -> None:
        if config.options.decoding is DecodingMethod.BEAM and (
            config.mode is not FinalizationMode.FULL_CONTEXT
        ):
            raise InvalidRequest(
                "beam search needs finalization_mode FULL_CONTEXT: the streaming decoder is greedy"
            )
        self._scheduler = scheduler
        self._engine = engine
        self._config = config
        self._limits = limits
        self._rate = engine.info.sample_rate
        self._pcm = PcmStream(config.encoding, config.sample_rate, config.channels, self._rate)
        self._pending: list[np.ndarray] = []  # converted, not yet given to the session
        self._kept: list[np.ndarray] | None = []  # everything, while full context may be used
        self._samples = 0
        self._session: object | None = None  # the engine's handle of this stream
        self._streaming = not (
            config.mode is FinalizationMode.FULL_CONTEXT and not config.interim_results
        )
        if config.mode is FinalizationMode.STREAMING:
            self._kept = None
        self._utterances: Utterances | None = None
        self._detector: SpeechDetector | None = None  # loaded by the first block
        if config.endpointing is not None:
            # The endpointer reads the streaming decoder's tokens, and full context applies
            # to each utterance's own audio, which Utterances keeps.
            self._streaming = True
            self._kept = None
            self._utterances = Utterances(
                config.endpointing,
                config.options,
                self._rate,
                engine.info.min_samples,
                self._utterance_full_context(config.mode, limits.auto_full_context_seconds),
                self._heard_speech,
            )
        self._outbox: deque[Partial] = deque()  # partials of a step not handed out yet
        self._flushed = False  # with endpointing: the stream's last step has run
        self._schedule = schedule = limits.schedule(engine.info.frame_seconds)
        self._next_block_at = engine.samples_for_frames(
            schedule.block_frames + schedule.lookahead_frames
        )
        self._finalized = ""
        self._draft = ""
        self._committed_seconds = 0.0
        self._changed = asyncio.Event()
        # Backpressure: the reader stops taking messages (and HTTP/2 flow control slows the
        # client) while this much converted audio waits for the model.
        self._max_backlog = int(BACKLOG_SECONDS * self._rate)
        self._room = asyncio.Event()
        self._room.set()
        self._ended_at: float | None = None
        self._error: BaseException | None = None
        self._queue_seconds = 0.0
        self._run_seconds = 0.0
        self.blocks = 0
        self._block_max = 0.0

    # -- input side (the request reader) ---------------------------------------------------------

    @staticmethod
    def _utterance_full_context(
        mode: FinalizationMode, limit: float
    ) -> Callable[[float], bool] | None:
        """Which utterances get a full-context pass, by their length in seconds."""
        if mode is FinalizationMode.STREAMING:
            return None
        if mode is FinalizationMode.FULL_CONTEXT:
            return lambda seconds: True
        return lambda seconds: seconds <= limit

    def add_audio(self, data: bytes) -> None:
        if self._utterances is not None and self._utterances.done:
            return  # single_utterance: the stream's one utterance is over; the rest is ignored
        samples = self._pcm.feed(data)
        self._append(samples)
        if self._backlog() > self._max_backlog:
            self._room.clear()

    async def wait_for_room(self) -> None:
        """Returns once the audio waiting for the model is below the backlog limit."""
        await self._room.wait()

    def _backlog(self) -> int:
        """Samples received but not yet committed by the encoder."""
        if not self._streaming:
            return 0  # buffered whole for one full-context pass, bounded by max_seconds
        return self._samples - int(self._committed_seconds * self._rate)

    @property
    def lag_seconds(self) -> float:
        """Seconds of audio received but not yet committed by the streaming encoder."""
        return self._backlog() / self._rate

    def end_input(self) -> None:
        self._append(self._pcm.finish())
        self._ended_at = time.monotonic()
        self._changed.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._changed.set()

    @property
    def ended_at(self) -> float | None:
        return self._ended_at

    def _append(self, samples: np.ndarray) -> None:
        if not samples.size:
            return
        self._samples += samples.size
        if self._samples > self._limits.max_seconds * self._rate:
            raise AudioTooLong(
                f"the stream passed {self._limits.max_seconds:g} s of audio, the server's limit "
                "for one stream; start a new stream to go on"
            )
        if self._kept is not None:
            self._kept.append(samples)
            if self._config.mode is FinalizationMode.AUTO and (
                self._samples > self._limits.auto_full_context_seconds * self._rate
            ):
                self._kept = None  # past the full-context limit: streaming finalization
        if self._streaming:
            self._pending.append(samples)
        if self._utterances is not None:
            self._utterances.add_audio(samples)
        self._changed.set()

    # -- output side -----------------------------------------------------------------------------

    @property
    def _full_context(self) -> bool:
        return self._kept is not None and self._config.mode is not FinalizationMode.STREAMING

    async def next_partial(self) -> Partial | None:
        """Waits for the next block and returns the texts after it; None once input has ended."""
        while True:
            if self._error is not None:
                raise self._error
            if self._outbox:
                return self._outbox.popleft()
            if self._utterances is not None and self._utterances.done:
                self._room.set()
                return None  # single_utterance: over after the first utterance
            if self._ended_at is not None and self._full_context:
                return None  # the full-context pass replaces the blocks still to run
            if self._streaming and self._samples >= self._next_block_at:
                self._outbox.extend(await self._run_block())
                continue
            if self._ended_at is not None:
                if self._utterances is not None and not self._flushed:
                    await self._flush(self._utterances)
                    continue
                return None
            self._changed.clear()
            await self._changed.wait()

    async def _run_block(self) -> list[Partial]:
        samples = self._take_pending()
        timed = self._count(
            await self._beside_voice_activity(
                samples, self._scheduler.run_block(self._open, samples)
            )
        )
        result: BlockResult = timed.value
        self.blocks += 1
        self._block_max = max(self._block_max, timed.run_seconds)
        self._next_block_at, self._committed_seconds = (
            result.next_block_at,
            result.committed_seconds,
        )
        if self._backlog() <= self._max_backlog:
            self._room.set()
        if self._utterances is not None:
            happenings = await self._utterances.advance(result, self._transcribe_utterance)
            if self._detector is not None:
                self._detector.forget_before(self._utterances.audio_start - 1.0)
            return self._partials(self._utterances, result, happenings)
        self._update_texts(result)
        return [Partial(self._finalized, self._draft, self._committed_seconds)]

    async def _flush(self, utterances: Utterances) -> None:
        """Endpointing: the stream's last step after the half-close, and its last utterance."""
        self._flushed = True
        self._check_length()
        samples = self._take_pending()
        options = self._config.options
        timed = await self._beside_voice_activity(
            samples,
            self._run(lambda engine: engine.stream_finish(self._open(engine), samples, options)),
            last=True,
        )
        result: BlockResult = timed.value[1]
        self._committed_seconds = result.committed_seconds
        happenings = await utterances.finish(
            result, self._samples / self._rate, self._transcribe_utterance
        )
        if happenings:
            self._outbox.extend(self._partials(utterances, result, happenings))

    async def _beside_voice_activity(
        self, samples: np.ndarray, step: Awaitable[T], *, last: bool = False
    ) -> T:
        """Awaits `step` (the model's work on `samples`); with endpointing, the voice-activity
        detector judges the same samples meanwhile, in a worker thread."""
        if self._utterances is None:
            return await step
        judged = asyncio.ensure_future(self._judge(samples, last=last))
        try:
            value = await step
        except BaseException:
            judged.cancel()
            raise
        await judged
        return value

    async def _judge(self, samples: np.ndarray, *, last: bool) -> None:
        if self._detector is None:
            self._detector = await asyncio.to_thread(SpeechDetector)
        detector = self._detector
        await asyncio.to_thread(detector.accept, samples)
        if last:
            await asyncio.to_thread(detector.finish)

    def _heard_speech(self, start: float, end: float) -> bool:
        return self._detector is not None and self._detector.heard_speech(start, end)

    def _partials(
        self, utterances: Utterances, result: BlockResult, happenings: list[Happening]
    ) -> list[Partial]:
        """One partial per speech event (each with the texts after the step), or one plain."""
        finalized, draft = utterances.texts(interim=self._config.interim_results)
        processed = self._committed_seconds
        if not happenings:
            return [Partial(finalized, draft, processed)]
        return [
            Partial(finalized, draft, processed, h.event, h.offset, h.utterance) for h in happenings
        ]

    async def _transcribe_utterance(self, audio: np.ndarray) -> Transcript:
        options = self._config.options
        timed = await self._run(lambda engine: engine.transcribe(audio, options))
        transcript: Transcript = timed.value
        return transcript

    def _open(self, engine: TranscriptionEngine) -> object:
        """The stream's session in the engine, opened by the first job (on the model's thread)."""
        if self._session is None:
            self._session = engine.open_stream(self._schedule, self._config.options.phrases)
        return self._session

    def _take_pending(self) -> np.ndarray:
        pending = self._pending
        self._pending = []
        return np.concatenate(pending) if pending else np.zeros(0, np.float32)

    async def _run(self, job: Callable[[TranscriptionEngine], Any]) -> Timed[Any]:
        return self._count(await self._scheduler.run(job))

    def _count(self, timed: Timed[T]) -> Timed[T]:
        """Adds a model call's queue and run time to the stream's figures."""
        self._queue_seconds += timed.queue_seconds
        self._run_seconds += timed.run_seconds
        return timed

    def _update_texts(self, result: BlockResult) -> None:
        committed, whole = result.committed_text, result.whole_text
        if self._full_context:
            # The final text will come from a full-context pass: nothing is final before it.
            self._draft = whole
            return
        if committed.startswith(self._finalized):
            self._finalized = committed
        else:  # detokenisation rules changed earlier text: append, never rewrite
            self._finalized = f"{self._finalized} {committed[len(self._finalized) :]}".strip()
        self._draft = whole[len(committed) :] if whole.startswith(committed) else whole

    def _check_length(self) -> None:
        if self._samples < self._engine.info.min_samples:
            raise InvalidRequest(
                f"the stream carried {self._samples / self._rate * 1000:.0f} ms of audio; "
                f"the model needs at least {self._engine.info.min_samples / self._rate * 1000:.0f}"
                " ms"
            )

    async def finish(self) -> Final:
        """Computes the final result once input has ended (with endpointing: once
        next_partial has returned None, every utterance closed)."""
        options = self._config.options
        full_context = self._full_context
        transcript: Transcript
        if self._utterances is not None:
            transcript = self._utterances.transcript()
            finalized = transcript.text
            full_context = any(u.full_context for u in self._utterances.closed)
        elif self._full_context:
            self._check_length()
            assert self._kept is not None
            audio = np.concatenate(self._kept)
            timed = await self._run(lambda engine: engine.transcribe(audio, options))
            transcript = timed.value
            finalized = transcript.text
        else:
            self._check_length()
            samples = self._take_pending()
            timed = await self._run(
                lambda engine: engine.stream_finish(self._open(engine), samples, options)
            )
            transcript, result = timed.value
            self._update_texts(result)
            finalized = self._finalized
        self._draft = ""
        figures = RequestFigures(
            audio_seconds=self._samples / self._rate,
            processing_seconds=self._run_seconds,
            word_count=transcript.word_count,
            queue_seconds=self._queue_seconds,
            inference_seconds=self._run_seconds,
        )
        return Final(
            finalized_text=finalized,
            transcript=transcript,
            figures=figures,
            full_context=full_context,
            blocks=self.blocks,
            block_seconds_max=self._block_max,
        )

    def close(self) -> None:
        """Drops the session's state (in the model's process too)."""
        if self._session is not None:
            self._engine.release(self._session)
        self._session = None
        if self._detector is not None:
            self._detector.close()
            self._detector = None
        self._kept = None
        self._pending = []


class LiveStreams:
    """Opens streams on the supervisor's current model process, at most `limit` at once."""

    def __init__(self, supervisor: Supervisor, limit: int, policy: StreamPolicy) -> None:
        self._supervisor = supervisor
        self.limit = limit
        self.policy = policy
        self.active = 0
        self._open: set[LiveTranscription] = set()

    def worst_lag_seconds(self) -> float:
        """The largest backlog of audio received but not yet encoded, over the open streams:
        how far the slowest stream's partials are behind its audio."""
        return max((live.lag_seconds for live in self._open), default=0.0)

    @asynccontextmanager
    async def open(self, request: StreamRequest) -> AsyncIterator[LiveTranscription]:
        """A stream holding its slot and its model process until the block ends; raises
        Overloaded beyond the limit, and InvalidRequest for options a stream cannot take."""
        if self.active >= self.limit:
            raise Overloaded(
                f"{self.active} streams are open, the server's limit; retry in a moment"
            )
        self.active += 1
        try:
            async with self._supervisor.lease() as process:
                engine = process.engine
                if engine is None:  # closed between the lease and now
                    raise ModelUnavailable("the model worker is restarting; retry in a moment")
                live = LiveTranscription(process.scheduler, engine, request, self.policy)
                phrases = request.options.phrases
                if phrases:
                    # Before any audio: a phrase the model cannot write fails this stream now,
                    # alone (its first block may share an engine call with other streams').
                    await process.scheduler.run(lambda engine: engine.check_phrases(phrases))
                self._open.add(live)
                try:
                    with process.scheduler.stream():
                        yield live
                finally:
                    self._open.discard(live)
                    live.close()
        finally:
            self.active -= 1
