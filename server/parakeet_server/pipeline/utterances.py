"""A live stream's utterances: the endpointer's cuts (endpointing.py) turned into final
Utterances, their speech events, and the stream's texts around them. No gRPC, no MLX.

An utterance's words are the streaming decoder's committed tokens up to its end, or, where the
finalization mode asks for full context (FULL_CONTEXT; AUTO for utterances up to its limit), one
full-attention pass over the utterance's own audio, as Transcribe would give for it. Either way
they are final once the utterance is sent: `finalized_text` is the closed utterances' texts
(and, where the open one's words come from the streaming decoder, its committed words), and
the stream's final transcript is the utterances' transcripts one after the other.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from parakeet_server.domain import BlockResult, Transcript, TranscriptionOptions
from parakeet_server.engine.results import tokens_to_transcript
from parakeet_server.pipeline.endpointing import (
    Endpointer,
    EndpointRules,
    EndReason,
    Event,
    HeardSpeech,
    SpeechBegan,
    UtteranceEnded,
)


class SpeechEvent(enum.Enum):
    SPEECH_BEGIN = "speech_begin"
    END_OF_UTTERANCE = "end_of_utterance"
    END_OF_SINGLE_UTTERANCE = "end_of_single_utterance"


@dataclass(frozen=True)
class Utterance:
    """A closed utterance; times in seconds from the stream's start."""

    index: int
    transcript: Transcript
    audio_start: float
    audio_end: float
    reason: EndReason
    closed_at: float  # audio decoded when it was closed
    full_context: bool
    end_of_speech_latency: float  # wall seconds from its last word's audio arriving


@dataclass(frozen=True)
class Happening:
    """One speech event, for one response: where in the audio, and the utterance it closes."""

    event: SpeechEvent
    offset: float
    utterance: Utterance | None = None


# A full-context pass over an utterance's audio (16 kHz mono float32).
Transcribe = Callable[[np.ndarray], Awaitable[Transcript]]


def shifted(transcript: Transcript, seconds: float) -> Transcript:
    """The transcript with every time moved `seconds` later."""
    return replace(
        transcript,
        segments=tuple(
            replace(
                segment,
                start=segment.start + seconds,
                end=segment.end + seconds,
                words=tuple(
                    replace(word, start=word.start + seconds, end=word.end + seconds)
                    for word in segment.words
                ),
            )
            for segment in transcript.segments
        ),
    )


def joined(transcripts: list[Transcript]) -> Transcript:
    """Transcripts of consecutive pieces of audio as one."""
    return Transcript(
        text=" ".join(t.text for t in transcripts if t.text),
        segments=tuple(segment for t in transcripts for segment in t.segments),
        word_count=sum(t.word_count for t in transcripts),
        token_ids=tuple(token for t in transcripts for token in t.token_ids),
    )


def _join(first: str, second: str) -> str:
    return f"{first} {second}" if first and second else first or second


class Utterances:
    """The endpointing side of one stream.

    `full_context(span_seconds)` says whether an utterance of that span gets a full-context
    pass; None: never (FINALIZATION_MODE_STREAMING), and no audio is kept. An utterance that
    passes the span while still open stays with the streaming decoder's words, which are then
    final at once.
    """

    def __init__(
        self,
        rules: EndpointRules,
        options: TranscriptionOptions,
        rate: int,
        min_samples: int,
        full_context: Callable[[float], bool] | None,
        heard_speech: HeardSpeech | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpointer = Endpointer(rules, heard_speech)
        self._options = options
        self._rate = rate
        self._min_samples = min_samples
        self._full_context = full_context
        self._clock = clock
        self._audio: list[np.ndarray] = []  # from sample _audio_from on, with full context
        self._audio_from = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (samples received, when)
        self._samples = 0
        self._open_streaming = False  # the open utterance outgrew full context
        self.closed: list[Utterance] = []
        self.done = False  # single_utterance: the one utterance is closed

    @property
    def rules(self) -> EndpointRules:
        return self._endpointer.rules

    @property
    def audio_start(self) -> float:
        """Where the open (or the next) utterance's audio starts."""
        return self._endpointer.audio_start

    def add_audio(self, samples: np.ndarray) -> None:
        self._samples += samples.size
        self._arrivals.append((self._samples, self._clock()))
        if self._full_context is not None:
            self._audio.append(samples)

    async def advance(self, result: BlockResult, transcribe: Transcribe) -> list[Happening]:
        """The events of one streaming step, each utterance it closed final."""
        events = self._endpointer.advance(
            result.tokens, result.draft, result.committed_seconds, result.decoded_seconds
        )
        happenings = await self._handle(events, transcribe)
        if (
            self._full_context is not None
            and self._endpointer.open_tokens
            and not self._full_context(result.decoded_seconds - self._endpointer.audio_start)
        ):
            self._open_streaming = True
        self._forget_before(self._endpointer.audio_start)
        return happenings

    async def finish(
        self, result: BlockResult, end_seconds: float, transcribe: Transcribe
    ) -> list[Happening]:
        """The events of the stream's last step, and the end of its open utterance."""
        events = self._endpointer.advance(
            result.tokens, (), result.committed_seconds, result.decoded_seconds
        )
        last = self._endpointer.finish(end_seconds)
        return await self._handle([*events, *([last] if last else [])], transcribe)

    def texts(self, *, interim: bool) -> tuple[str, str]:
        """(finalized_text, draft_text) after a step: words in no speech are left out."""
        closed = " ".join(u.transcript.text for u in self.closed if u.transcript.text)
        if self.done:
            return closed, ""
        words = "".join(t.text for t in self._endpointer.open_tokens).strip()
        tail = "".join(t.text for t in self._endpointer.draft).strip()
        if self._full_context is None or self._open_streaming:
            finalized, pending = _join(closed, words), tail
        else:
            finalized, pending = closed, _join(words, tail)
        if not interim:
            return finalized, ""
        return finalized, (f" {pending}" if finalized and pending else pending)

    def transcript(self) -> Transcript:
        """The stream's transcript: its utterances' one after the other."""
        return joined([u.transcript for u in self.closed])

    async def _handle(self, events: list[Event], transcribe: Transcribe) -> list[Happening]:
        happenings = []
        single = self.rules.single_utterance
        for event in events:
            if self.done:
                break
            if isinstance(event, SpeechBegan):
                happenings.append(Happening(SpeechEvent.SPEECH_BEGIN, event.at))
                continue
            utterance = await self._utterance(event, transcribe)
            self.closed.append(utterance)
            kind = SpeechEvent.END_OF_SINGLE_UTTERANCE if single else SpeechEvent.END_OF_UTTERANCE
            happenings.append(Happening(kind, event.speech_end, utterance))
            self.done = single
        return happenings

    async def _utterance(self, ended: UtteranceEnded, transcribe: Transcribe) -> Utterance:
        span = ended.audio_end - ended.audio_start
        full = (
            self._full_context is not None and not self._open_streaming and self._full_context(span)
        )
        self._open_streaming = False
        start = round(ended.audio_start * self._rate)
        audio = self._audio_between(start, round(ended.audio_end * self._rate)) if full else None
        if audio is not None and audio.size >= self._min_samples:
            transcript = shifted(await transcribe(audio), start / self._rate)
        else:
            full = False
            transcript = tokens_to_transcript(ended.tokens, self._options)
        return Utterance(
            index=ended.index,
            transcript=transcript,
            audio_start=ended.audio_start,
            audio_end=ended.audio_end,
            reason=ended.reason,
            closed_at=ended.closed_at,
            full_context=full,
            end_of_speech_latency=self._clock() - self._arrival(ended.speech_end),
        )

    def _audio_between(self, start: int, end: int) -> np.ndarray:
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        self._audio = [audio]
        return audio[max(0, start - self._audio_from) : max(0, end - self._audio_from)]

    def _arrival(self, seconds: float) -> float:
        """When the audio up to `seconds` had reached the server."""
        sample = round(seconds * self._rate)
        for received, when in self._arrivals:
            if received >= sample:
                return when
        return self._arrivals[-1][1] if self._arrivals else self._clock()

    def _forget_before(self, seconds: float) -> None:
        """Drops audio and arrival times no utterance can need any more."""
        sample = round(seconds * self._rate)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < sample:
            self._arrivals.popleft()
        if self._full_context is not None and sample > self._audio_from:
            audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
            self._audio = [audio[sample - self._audio_from :]]
            self._audio_from = min(sample, self._audio_from + audio.size)
