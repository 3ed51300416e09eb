"""Endpointing: cutting a live stream into utterances at the pauses in its speech.

The pauses are read from the model's own output, as NeMo's streaming pipeline does: after each
streaming step the decoder has committed some tokens and decoded a draft over the look-ahead;
an utterance ends once no token follows its last one for `trailing_silence`, counted up to the
draft's first token or, with an empty draft, to the end of the decoded audio. The blank frames
come free with every step, and a cut there never falls inside a word the decoder heard.

A voice-activity detector only vets the tokens: one that lies in no speech (a word the model
hears in noise) counts as blank, so noise neither opens an utterance nor holds one open.
Plain Python, no gRPC, no MLX.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parakeet_server.domain import TimedToken

# Audio kept before an utterance's first word when nothing preceded it for a while: a
# full-context pass over the utterance hears its onset with a little silence before it.
LEAD_SECONDS = 1.0

# Token times are multiples of the 80 ms frame in float arithmetic.
_EPSILON = 1e-6

# A token is speech when the detector heard speech within this much of it: a CTC spike and a
# detector window need not line up exactly (measured: every word of 8 espeak sentences, clean
# and in white noise at 10 and 20 dB SNR, lies in Silero speech with no margin at all).
SPEECH_MARGIN_SECONDS = 0.1

# Whether there was speech in the audio between two times (seconds from the stream's start).
HeardSpeech = Callable[[float, float], bool]


@dataclass(frozen=True)
class EndpointRules:
    """A stream's endpointing settings (StreamingConfig.endpointing), in seconds."""

    trailing_silence: float = 0.8
    max_utterance: float = 30.0
    single_utterance: bool = False

    def __post_init__(self) -> None:
        if not (self.trailing_silence > 0 and self.max_utterance > 0):
            raise ValueError("trailing silence and max utterance must be positive")


class EndReason(enum.Enum):
    SILENCE = "silence"
    MAX_UTTERANCE = "max_utterance"
    END_OF_STREAM = "end_of_stream"


@dataclass(frozen=True)
class SpeechBegan:
    """An utterance's first word was committed; `at` is its start."""

    at: float


@dataclass(frozen=True)
class UtteranceEnded:
    """An utterance was closed: its tokens, the audio it covers, and why."""

    index: int
    tokens: tuple[TimedToken, ...]
    audio_start: float
    audio_end: float  # the cut: inside the pause after its last token
    reason: EndReason
    closed_at: float  # how far the decoded audio reached when it was closed

    @property
    def speech_end(self) -> float:
        return self.tokens[-1].end


Event = SpeechBegan | UtteranceEnded


def starts_word(token: TimedToken) -> bool:
    """A token whose text opens with a space begins a word (SentencePiece's '▁')."""
    return token.text.startswith(" ")


class Endpointer:
    """Decides where utterances begin and end, step by step, from the decoder's tokens.

    Each step gives `advance` the tokens the decoder committed in it, its draft's tokens, and
    how far the committed and the decoded (committed plus look-ahead) audio reach; tokens in
    no speech are dropped first. Events come back in audio order:

    - SpeechBegan when a token arrives while no utterance is open;
    - UtteranceEnded (SILENCE) at a gap of at least `trailing_silence` before a token that
      begins a word, or after the last token up to the draft's first token or the decoded end;
    - UtteranceEnded (MAX_UTTERANCE) before the first word that would make the utterance longer
      than `max_utterance` (the cut falls between words, never inside one);
    - `finish` closes what is open at the end of the stream (END_OF_STREAM).

    A stream with no token (silence, noise the model does not take for words) has no utterance.
    """

    def __init__(self, rules: EndpointRules, heard_speech: HeardSpeech | None = None) -> None:
        """`heard_speech`: the voice-activity detector's say; None takes every token."""
        self.rules = rules
        self._heard_speech = heard_speech
        self._open: list[TimedToken] = []
        self.draft: list[TimedToken] = []  # the last step's draft tokens that lie in speech
        self._start = 0.0  # where the open (or the next) utterance's audio starts
        self._count = 0

    @property
    def open_tokens(self) -> Sequence[TimedToken]:
        """The committed tokens of the utterance not closed yet."""
        return self._open

    @property
    def audio_start(self) -> float:
        """Where the open (or the next) utterance's audio starts: audio before it belongs to
        closed utterances or to silence, and need not be kept."""
        return self._start

    def speech(self, tokens: Sequence[TimedToken]) -> list[TimedToken]:
        """The tokens that lie in speech."""
        heard = self._heard_speech
        if heard is None:
            return list(tokens)
        margin = SPEECH_MARGIN_SECONDS
        return [t for t in tokens if heard(t.start - margin, t.end + margin)]

    def advance(
        self,
        tokens: Sequence[TimedToken],
        draft: Sequence[TimedToken],
        committed: float,
        decoded: float,
    ) -> list[Event]:
        rules = self.rules
        events: list[Event] = []
        self.draft = self.speech(draft)
        for token in self.speech(tokens):
            if self._open and starts_word(token):
                previous = self._open[-1]
                cut = (previous.end + token.start) / 2
                if token.start - previous.end >= rules.trailing_silence - _EPSILON:
                    events.append(self._close(cut, EndReason.SILENCE, decoded))
                elif token.end - self._open[0].start > rules.max_utterance + _EPSILON:
                    events.append(self._close(cut, EndReason.MAX_UTTERANCE, decoded))
            if not self._open:
                events.append(SpeechBegan(token.start))
            self._open.append(token)
        if self._open:
            horizon = self.draft[0].start if self.draft else decoded
            last = self._open[-1].end
            if horizon - last >= rules.trailing_silence - _EPSILON:
                events.append(self._close((last + horizon) / 2, EndReason.SILENCE, decoded))
        if not self._open:
            # Every later token starts at or after `committed`.
            self._start = max(self._start, committed - LEAD_SECONDS)
        return events

    def finish(self, end: float) -> UtteranceEnded | None:
        """Closes the open utterance, if any, at the end of the stream (`end` seconds)."""
        if not self._open:
            return None
        return self._close(max(end, self._open[-1].end), EndReason.END_OF_STREAM, end)

    def _close(self, cut: float, reason: EndReason, decoded: float) -> UtteranceEnded:
        ended = UtteranceEnded(
            index=self._count,
            tokens=tuple(self._open),
            audio_start=self._start,
            audio_end=cut,
            reason=reason,
            closed_at=decoded,
        )
        self._count += 1
        self._open = []
        self._start = cut
        return ended
