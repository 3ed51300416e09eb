"""Plain data for what goes into and comes out of transcription; no gRPC, no MLX."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class DecodingMethod(enum.Enum):
    GREEDY = "greedy"
    BEAM = "beam"


@dataclass(frozen=True)
class TranscriptionOptions:
    """What a client may choose; the defaults are what a dictation client wants."""

    word_timestamps: bool = False
    decoding: DecodingMethod = DecodingMethod.GREEDY
    beam_size: int = 5
    length_penalty: float = 1.0
    patience: float = 1.0
    duration_reward: float = 0.7
    max_words: int | None = None
    max_silence_seconds: float | None = None
    max_segment_seconds: float | None = None


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Segment:
    text: str
    start: float
    end: float
    confidence: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...] = ()
    # Counted from the tokens even when `words` are not requested, for the PERF figures.
    word_count: int = 0
    token_ids: tuple[int, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Progress:
    """One step of a transcription done in chunks: what is settled so far.

    `segments` are those that became final in this step; together, the steps' segments are
    the transcript's. The last step (`transcript` set) settles the rest.
    """

    processed_seconds: float
    total_seconds: float
    segments: tuple[Segment, ...]
    chunks_done: int
    chunks_total: int
    transcript: Transcript | None = None


@dataclass(frozen=True)
class BlockResult:
    """A live stream after one more block: where the next one starts, and its texts so far."""

    next_block_at: int  # input samples after which the next block can run
    committed_seconds: float
    committed_text: str  # text of the committed tokens (final)
    whole_text: str  # committed text and the draft after it
