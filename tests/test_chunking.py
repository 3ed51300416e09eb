"""Cutting long recordings into chunks and joining their tokens: every word exactly once."""

from __future__ import annotations

import itertools
import random

import pytest
from parakeet_mlx.alignment import AlignedToken

from parakeet_server.engine.chunking import ChunkJoiner, plan_chunks, splice

RATE = 16000


@pytest.mark.parametrize(
    ("total", "chunk", "overlap"),
    [
        (1, 10, 2),
        (10, 10, 2),
        (11, 10, 2),
        (95, 10, 2),
        (1000, 30, 5),
        (16000 * 3600, 480000, 80000),
    ],
)
def test_chunks_cover_everything_with_equal_lengths_and_overlap(
    total: int, chunk: int, overlap: int
) -> None:
    chunks = plan_chunks(total, chunk, overlap)
    assert chunks[0].start == 0
    assert chunks[-1].end == total
    assert {c.end - c.start for c in chunks} == {min(chunk, total)}
    for previous, current in itertools.pairwise(chunks):
        assert previous.start < current.start
        assert previous.end - current.start >= overlap  # no gap, at least the overlap


def test_impossible_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_chunks(100, 10, 10)


def _truth(rng: random.Random, seconds: float) -> list[AlignedToken]:
    """A recording's tokens: words of 1-3 subword tokens from a small vocabulary (many repeats)."""
    tokens = []
    time = 0.1
    while time < seconds - 0.5:
        for piece in range(rng.randint(1, 3)):
            token_id = rng.randrange(40)
            text = (" " if piece == 0 else "") + f"t{token_id}"
            duration = rng.choice([0.08, 0.16, 0.24])
            tokens.append(AlignedToken(token_id, text, time, duration))
            time += duration
        time += rng.choice([0.0, 0.08, 0.16, 0.4])
    return tokens


def _observe(
    truth: list[AlignedToken], start: float, end: float, total: float, rng: random.Random
) -> list[AlignedToken]:
    """What a chunk's decoder would give: the tokens it covers, times relative to the chunk,
    jittered by a frame, and garbled near its cut edges where it lacks context."""
    seen = []
    # A chunk's timing may be off by a frame as a whole; within a chunk it is consistent.
    jitter = rng.choice([-0.08, 0.0, 0.0, 0.08])
    for token in truth:
        center = token.start + token.duration / 2
        if not start <= center < end:
            continue
        near_edge = (start > 0 and center - start < 0.6) or (
            end < total - 0.01 and end - center < 0.6
        )
        if near_edge and rng.random() < 0.5:
            if rng.random() < 0.5:
                continue  # dropped
            token = AlignedToken(99, " garbled", token.start, token.duration)
        seen.append(
            AlignedToken(
                token.id, token.text, max(start, token.start + jitter) - start, token.duration
            )
        )
    return seen


@pytest.mark.parametrize("seed", range(20))
def test_joined_chunks_give_every_token_once_at_its_place(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.uniform(40, 200)
    truth = _truth(rng, total)
    chunk_seconds, overlap_seconds = rng.choice([(10.0, 2.0), (30.0, 5.0), (20.0, 4.0)])
    chunks = plan_chunks(int(total * RATE), int(chunk_seconds * RATE), int(overlap_seconds * RATE))
    joiner = ChunkJoiner(chunks, RATE)
    settled_before: list[tuple[int, float]] = []
    for chunk in chunks:
        joiner.add(_observe(truth, chunk.start / RATE, chunk.end / RATE, total, rng))
        # Tokens reported settled never change afterwards.
        settled = [(t.id, round(t.start, 6)) for t in joiner.tokens[: joiner.settled()]]
        assert settled[: len(settled_before)] == settled_before
        settled_before = settled
    assert joiner.settled() == len(joiner.tokens)
    assert [t.id for t in joiner.tokens] == [t.id for t in truth]
    for joined, spoken in zip(joiner.tokens, truth, strict=True):
        assert abs(joined.start - spoken.start) <= 0.08 + 1e-9  # times from the recording's start
    starts = [t.start for t in joiner.tokens]
    assert starts == sorted(starts)


def test_without_any_agreement_the_cut_keeps_each_side_once() -> None:
    # The two chunks disagree on every token of the overlap [8, 10]: the join is a time cut at
    # 9 s, at a word start of the second chunk, and nothing outside the overlap is lost.
    before = [AlignedToken(1, " a", t / 10, 0.08) for t in range(0, 100, 2)]  # 0.0 .. 9.8 s
    after = [AlignedToken(2, " b", 8 + t / 10, 0.08) for t in range(0, 60, 2)]  # 8.0 .. 13.8 s
    joined = splice(before, after, 8.0, 10.0)
    assert [t.text for t in joined if t.start < 8.9] == [" a"] * 45
    assert [t.text for t in joined if t.start > 9.1] == [" b"] * 24
    starts = [t.start for t in joined]
    assert starts == sorted(starts)
    assert len({round(s, 6) for s in starts}) == len(starts)


def test_the_join_is_at_the_agreed_token_nearest_the_middle() -> None:
    # Both chunks agree on the whole overlap except its edges; the result is the recording.
    words = [AlignedToken(i % 7, f" w{i % 7}", i * 0.5, 0.2) for i in range(40)]  # 0 .. 19.5 s
    before = [t for t in words if t.start < 12.0] + [AlignedToken(50, " edge", 12.1, 0.2)]
    after = [AlignedToken(51, " edge", 8.0, 0.2)] + [t for t in words if t.start >= 8.25]
    joined = splice(before, after, 8.0, 12.3)
    assert [t.text for t in joined] == [t.text for t in words]
