"""parakeet-mlx's aligned tokens and sentences -> the server's Transcript, Segment and Word."""

from __future__ import annotations

import math
from typing import Any

from parakeet_server.domain import Segment, Transcript, Word


def sentences_to_transcript(sentences: list[Any], word_timestamps: bool) -> Transcript:
    """A Transcript of parakeet-mlx sentences (`tokens_to_sentences`)."""
    from parakeet_mlx.alignment import sentences_to_result

    return to_transcript(sentences_to_result(sentences), word_timestamps=word_timestamps)


def _geometric_mean(values: list[float]) -> float:
    if not values:
        return 0.0
    return float(math.exp(sum(math.log(v + 1e-10) for v in values) / len(values)))


def _words(tokens: list[Any]) -> list[Word]:
    """Groups subword tokens into words: a token whose text starts with a space opens one."""
    groups: list[list[Any]] = []
    for token in tokens:
        if not groups or token.text.startswith(" "):
            groups.append([token])
        else:
            groups[-1].append(token)
    words = []
    for group in groups:
        text = "".join(t.text for t in group).strip()
        if text:
            words.append(
                Word(
                    text=text,
                    start=group[0].start,
                    end=group[-1].end,
                    confidence=_geometric_mean([t.confidence for t in group]),
                )
            )
    return words


def to_transcript(result: Any, *, word_timestamps: bool) -> Transcript:
    segments = []
    word_count = 0
    for sentence in result.sentences:
        words = _words(sentence.tokens)
        word_count += len(words)
        segments.append(
            Segment(
                text=sentence.text.strip(),
                start=sentence.start,
                end=sentence.end,
                confidence=float(sentence.confidence),
                words=tuple(words) if word_timestamps else (),
            )
        )
    return Transcript(
        text=result.text,
        segments=tuple(segments),
        word_count=word_count,
        token_ids=tuple(t.id for t in result.tokens),
    )
