"""Exact byte forms of what the caches hold: decoded PCM and finished transcripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from parakeet_server.domain import Segment, Transcript, Word

V = TypeVar("V")
Buffer = bytes | memoryview

_PCM_DTYPE = np.dtype("<f4")
_TRANSCRIPT_FORMAT = 1


@dataclass(frozen=True)
class Codec(Generic[V]):
    """How a cache measures, writes and reads back one kind of value.

    `decode` raises ValueError for a payload it cannot read back exactly.
    """

    size: Callable[[V], int]
    encode: Callable[[V], Buffer]
    decode: Callable[[Buffer], V]
    # Makes a value safe to share between requests (no-op for immutable ones).
    freeze: Callable[[V], V] = lambda value: value


def pcm_size(samples: NDArray[np.float32]) -> int:
    return int(samples.nbytes)


def pcm_to_bytes(samples: NDArray[np.float32]) -> Buffer:
    """Little-endian float32, no copy when the array already is one contiguous block of it."""
    if samples.ndim != 1 or samples.dtype != np.float32:
        raise ValueError(f"PCM must be 1-D float32, not {samples.ndim}-D {samples.dtype}")
    return np.ascontiguousarray(samples, dtype=_PCM_DTYPE).data.cast("B")


def freeze_pcm(samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """Marks the caller's array read-only: the cache shares it, and a change would be served."""
    samples.flags.writeable = False
    return samples


def pcm_from_bytes(payload: Buffer) -> NDArray[np.float32]:
    """A read-only array over `payload` itself (no copy)."""
    if len(payload) % _PCM_DTYPE.itemsize:
        raise ValueError(f"PCM payload of {len(payload)} bytes is not whole float32 samples")
    samples = np.frombuffer(payload, dtype=_PCM_DTYPE).astype(np.float32, copy=False)
    samples.flags.writeable = False
    return samples


def _word(word: Word) -> list[Any]:
    return [word.text, float(word.start), float(word.end), float(word.confidence)]


def transcript_to_bytes(transcript: Transcript) -> bytes:
    """Compact JSON of arrays. Floats are written as `repr` does, so they read back exactly."""
    document = [
        _TRANSCRIPT_FORMAT,
        transcript.text,
        transcript.word_count,
        [int(token) for token in transcript.token_ids],
        [
            [
                s.text,
                float(s.start),
                float(s.end),
                float(s.confidence),
                [_word(w) for w in s.words],
            ]
            for s in transcript.segments
        ],
    ]
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def transcript_from_bytes(payload: Buffer) -> Transcript:
    try:
        version, text, word_count, token_ids, segments = json.loads(bytes(payload))
        if version != _TRANSCRIPT_FORMAT:
            raise ValueError(f"transcript format {version}, expected {_TRANSCRIPT_FORMAT}")
        return Transcript(
            text=_typed(text, str),
            segments=tuple(
                Segment(
                    text=_typed(s_text, str),
                    start=_number(start),
                    end=_number(end),
                    confidence=_number(confidence),
                    words=tuple(
                        Word(_typed(w_text, str), _number(ws), _number(we), _number(wc))
                        for w_text, ws, we, wc in words
                    ),
                )
                for s_text, start, end, confidence, words in segments
            ),
            word_count=_typed(word_count, int),
            token_ids=tuple(_typed(token, int) for token in token_ids),
        )
    except (TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"not a cached transcript: {error}") from error
    except ValueError as error:  # json.JSONDecodeError and unpacking errors are ValueErrors
        raise ValueError(f"not a cached transcript: {error}") from error


T = TypeVar("T")


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _number(value: object) -> float:
    # json reads 1.0 back as a float but an int-valued confidence written by other code as int.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def transcript_size(transcript: Transcript) -> int:
    return len(transcript_to_bytes(transcript))


PCM_CODEC: Codec[NDArray[np.float32]] = Codec(pcm_size, pcm_to_bytes, pcm_from_bytes, freeze_pcm)
TRANSCRIPT_CODEC: Codec[Transcript] = Codec(
    transcript_size, transcript_to_bytes, transcript_from_bytes
)
