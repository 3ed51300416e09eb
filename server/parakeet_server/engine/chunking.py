"""Long recordings: where to cut them into overlapping chunks, and how to join the results.

Plain Python over token lists (no MLX): each chunk is transcribed on its own, its token times are
shifted to the whole recording, and consecutive chunks are spliced inside their overlap at a
token both chunks agree on, so that every word of an overlap appears exactly once.

Tokens are parakeet-mlx AlignedTokens (id, text, start, duration, end, confidence), or anything
with those attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Two chunks' copies of one token start within a few encoder frames (80 ms) of each other.
ALIGN_TOLERANCE_SECONDS = 0.32


class Token(Protocol):
    id: int
    text: str
    start: float
    duration: float
    end: float


@dataclass(frozen=True)
class Chunk:
    """Samples [start, end) of the recording."""

    start: int
    end: int


def plan_chunks(total: int, chunk: int, overlap: int) -> list[Chunk]:
    """Overlapping chunks of `chunk` samples covering `total` samples.

    As few chunks as keep consecutive ones overlapping by at least `overlap` samples, spread
    evenly (the spare length widens every overlap alike). Every chunk has the same length, so a
    batch of chunks needs no padding and a chunk's result does not depend on its batch.
    """
    if chunk <= 0 or not 0 <= overlap < chunk:
        raise ValueError(f"need 0 <= overlap < chunk, got chunk={chunk} overlap={overlap}")
    if total <= chunk:
        return [Chunk(0, total)]
    count = math.ceil((total - overlap) / (chunk - overlap))
    span = total - chunk
    return [
        Chunk(start, start + chunk)
        for start in (span * index // (count - 1) for index in range(count))
    ]


def _center(token: Token) -> float:
    return token.start + token.duration / 2


def shift(tokens: Sequence[Any], seconds: float) -> list[Any]:
    """The tokens with their times moved by `seconds` (in place: they are the chunk's own)."""
    for token in tokens:
        token.start += seconds
        token.end = token.start + token.duration
    return list(tokens)


def splice(
    before: Sequence[Any], after: Sequence[Any], overlap_start: float, overlap_end: float
) -> list[Any]:
    """Joins the tokens of two chunks that both cover [overlap_start, overlap_end].

    Within the overlap the two token sequences are aligned (longest common subsequence of
    token ids whose times agree within a tolerance), and the join happens at the aligned pair
    nearest the middle of the overlap, where both chunks had the most context: `before` up to
    and including that token, `after` from the token following its twin. Without any aligned
    pair, the join is a cut in time at the middle of the overlap, moved to the next word start
    of `after`. Either way each token comes from exactly one chunk.
    """
    middle = (overlap_start + overlap_end) / 2
    a_first = next((i for i, t in enumerate(before) if _center(t) >= overlap_start), len(before))
    b_last = next((j for j, t in enumerate(after) if _center(t) > overlap_end), len(after))
    a_window = before[a_first:]
    b_window = after[:b_last]
    pairs = _aligned_pairs(a_window, b_window, ALIGN_TOLERANCE_SECONDS)
    if pairs:
        i, j = min(pairs, key=lambda p: abs(_center(a_window[p[0]]) - middle))
        return _monotonic([*before[: a_first + i + 1]], after[j + 1 :])
    cut_index = next(
        (
            j
            for j, t in enumerate(after)
            if _center(t) >= middle and (t.text.startswith(" ") or j == 0)
        ),
        len(after),
    )
    cut = after[cut_index].start if cut_index < len(after) else middle
    # Tokens centred before the overlap are never dropped (ChunkJoiner.settled relies on it).
    cut = max(cut, overlap_start)
    return _monotonic([t for t in before if _center(t) < cut], after[cut_index:])


def _monotonic(head: list[Any], tail: Sequence[Any]) -> list[Any]:
    """head + tail, with tail tokens that the two chunks' timing puts before the end of head's
    last token starting at that end instead (their own end is kept)."""
    if head and tail:
        floor = head[-1].end
        for token in tail:
            if token.start >= floor:
                break
            token.duration = max(0.0, token.end - floor)
            token.start = floor
            token.end = floor + token.duration
            floor = token.end
    return [*head, *tail]


def _aligned_pairs(
    a: Sequence[Token], b: Sequence[Token], tolerance: float
) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of ids whose starts differ < tolerance."""

    def same(i: int, j: int) -> bool:
        return a[i].id == b[j].id and abs(a[i].start - b[j].start) < tolerance

    rows, cols = len(a), len(b)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            table[i][j] = (
                table[i + 1][j + 1] + 1 if same(i, j) else max(table[i + 1][j], table[i][j + 1])
            )
    pairs = []
    i = j = 0
    while i < rows and j < cols:
        if same(i, j):
            pairs.append((i, j))
            i += 1
            j += 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


class ChunkJoiner:
    """Accumulates chunk results in order and knows which tokens can no longer change."""

    def __init__(self, chunks: Sequence[Chunk], sample_rate: int) -> None:
        self._chunks = list(chunks)
        self._rate = sample_rate
        self._done = 0
        self.tokens: list[Any] = []

    @property
    def done(self) -> int:
        """Chunks joined so far."""
        return self._done

    def add(self, tokens: Sequence[Any]) -> None:
        """Joins the next chunk's tokens (times relative to the chunk's own start)."""
        chunk = self._chunks[self._done]
        shifted = shift(tokens, chunk.start / self._rate)
        # A duration prediction may run past the audio the chunk saw: end it there.
        end = chunk.end / self._rate
        for token in shifted:
            if token.end > end:
                token.duration = max(0.0, end - token.start)
                token.end = token.start + token.duration
        if self._done == 0:
            self.tokens = shifted
        else:
            previous = self._chunks[self._done - 1]
            self.tokens = splice(
                self.tokens, shifted, chunk.start / self._rate, previous.end / self._rate
            )
        self._done += 1

    def settled(self) -> int:
        """How many leading tokens no later chunk can change."""
        if self._done >= len(self._chunks):
            return len(self.tokens)
        # The next splice only touches tokens centred inside the next chunk's overlap.
        boundary = self._chunks[self._done].start / self._rate
        return next(
            (i for i, t in enumerate(self.tokens) if _center(t) >= boundary), len(self.tokens)
        )
