"""Plain data every layer shares: options, results, the model's description and the engine's
settings. Imports nothing of this package, no gRPC, no MLX."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

DEFAULT_MODEL = "mlx-community/parakeet-tdt-0.6b-v3"
DTYPES = ("auto", "float32", "bfloat16", "float16")


class DecodingMethod(enum.Enum):
    GREEDY = "greedy"
    BEAM = "beam"


# Phrase boosting limits (TranscriptionOptions.phrases): what a request may ask for.
MAX_PHRASES = 1000
MAX_PHRASE_CHARS = 100
MAX_BOOST = 20.0


@dataclass(frozen=True)
class Phrase:
    """A word or phrase the decoder favours by `boost` (in (0, MAX_BOOST])."""

    text: str
    boost: float


def phrase_problem(phrases: tuple[Phrase, ...], field: str) -> str | None:
    """Why `phrases` cannot be used (a sentence naming the field), or None when they can."""
    if len(phrases) > MAX_PHRASES:
        return f"{field} has {len(phrases)} phrases; at most {MAX_PHRASES} are accepted"
    for index, phrase in enumerate(phrases):
        name = f"{field}[{index}]"
        if not phrase.text.strip():
            return f"{name}.text is empty; give the word or phrase to favour"
        if len(phrase.text) > MAX_PHRASE_CHARS:
            return (
                f"{name}.text is {len(phrase.text)} characters long ({phrase.text[:20]!r}...); "
                f"at most {MAX_PHRASE_CHARS} are accepted"
            )
        # `not 0 < boost` is true for NaN too.
        if not 0.0 < phrase.boost <= MAX_BOOST:
            return (
                f"{name}.boost ({phrase.text!r}) must be greater than 0 and at most "
                f"{MAX_BOOST:g}, not {phrase.boost}"
            )
    return None


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
    # Words and phrases to favour while decoding (phrase boosting); checked by phrase_problem.
    phrases: tuple[Phrase, ...] = ()


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
class TimedToken:
    """One token the decoder emitted: its text as the tokenizer writes it alone (a leading
    space opens a word), where it lies in the audio, in seconds, and its confidence."""

    id: int
    text: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class BlockResult:
    """A live stream after one more block: where the next one starts, and its texts so far."""

    next_block_at: int  # input samples after which the next block can run
    committed_seconds: float
    committed_text: str  # text of the committed tokens (final)
    whole_text: str  # committed text and the draft after it
    # What an endpointer needs: the tokens committed since the previous result, in order;
    # the draft's tokens; and how far the decoded audio reaches, committed and look-ahead
    # frames, in seconds.
    tokens: tuple[TimedToken, ...] = ()
    draft: tuple[TimedToken, ...] = ()
    decoded_seconds: float = 0.0


@dataclass(frozen=True)
class ChunkingConfig:
    """Recordings longer than `chunk_seconds` are cut into overlapping chunks and merged.

    `batch_size` chunks go through the encoder together (all chunks have the same length, so a
    batch needs no padding and gives the same result as one chunk at a time).
    """

    chunk_seconds: float = 30.0
    overlap_seconds: float = 5.0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.chunk_seconds <= 0 or not 0 <= self.overlap_seconds < self.chunk_seconds:
            raise ValueError("chunk seconds must be positive and the overlap below it")
        if self.batch_size < 1:
            raise ValueError("the chunk batch size must be at least 1")


@dataclass(frozen=True)
class BlockSchedule:
    """Block schedule of the streaming encoder, in encoder frames (80 ms each for Parakeet)."""

    block_frames: int = 16
    lookahead_frames: int = 8
    left_context_frames: int = 128

    def __post_init__(self) -> None:
        if self.block_frames < 1 or self.lookahead_frames < 0 or self.left_context_frames < 1:
            raise ValueError("block >= 1, look-ahead >= 0 and left context >= 1 frames")


def samples_needed(
    *, hop_length: int, win_length: int, n_fft: int, subsampling: int, frames: int
) -> int:
    """Input samples after which encoder frame `frames - 1` has its whole receptive field."""
    last_mel = (frames + 1) * subsampling - 1
    return int(last_mel * hop_length + win_length - n_fft // 2)


@dataclass(frozen=True)
class MemoryFigures:
    """What the model's process holds at one moment, by who holds it: MLX's arrays and its
    reuse cache (its own accounting), and the C heap under them (glibc's mallinfo2: bytes
    allocated, and bytes free but kept by malloc; 0 where that is not known)."""

    mlx_active: int = 0
    mlx_cache: int = 0
    mlx_peak: int = 0  # most MLX held at once since the process started
    heap_in_use: int = 0
    heap_free: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, and how long it took; reported by GetServerInfo and the startup log."""

    model_id: str
    kind: str  # "tdt", "rnnt", "ctc" or "tdt_ctc"
    sample_rate: int
    vocabulary_size: int
    dtype: str
    device: str
    blas: str
    parameter_count: int
    min_samples: int
    frame_seconds: float  # one encoder frame
    # The feature front end, for scheduling stream blocks without the model at hand.
    hop_length: int
    win_length: int
    n_fft: int
    subsampling: int
    load_seconds: float
    warmup_seconds: float = 0.0
    matmul_gflops: float = 0.0
    library_versions: dict[str, str] = field(default_factory=dict)

    def samples_for_frames(self, frames: int) -> int:
        """Input samples after which the first `frames` encoder frames can be computed."""
        return samples_needed(
            hop_length=self.hop_length,
            win_length=self.win_length,
            n_fft=self.n_fft,
            subsampling=self.subsampling,
            frames=frames,
        )
