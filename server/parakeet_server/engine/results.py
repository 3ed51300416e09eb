"""parakeet-mlx's aligned tokens and sentences -> the server's Transcript, Segment and Word.

Plain Python (parakeet-mlx is imported only inside `sentences_to_transcript`), so that the
server process can build an utterance's Transcript from a stream's tokens without MLX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from parakeet_server.domain import Segment, TimedToken, Transcript, TranscriptionOptions, Word


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


def _ends_sentence(tokens: Sequence[TimedToken], index: int) -> bool:
    """parakeet-mlx's sentence punctuation rule (`tokens_to_sentences`), token by token."""
    text = tokens[index].text
    if any(mark in text for mark in "!?\u3002\uff1f\uff01"):  # and the CJK full stop, ? and !
        return True
    return "." in text and (index == len(tokens) - 1 or " " in tokens[index + 1].text)


def tokens_to_transcript(tokens: Sequence[TimedToken], options: TranscriptionOptions) -> Transcript:
    """The Transcript parakeet-mlx's `tokens_to_sentences` and `to_transcript` give for these
    tokens, with the segmentation rules of `options`, in plain Python (tested to be equal)."""
    groups: list[list[TimedToken]] = []
    current: list[TimedToken] = []
    last = len(tokens) - 1
    for index, token in enumerate(tokens):
        current.append(token)
        following = tokens[index + 1] if index < last else None
        over_words = (
            options.max_words is not None
            and following is not None
            and sum(" " in t.text for t in current) + (" " in following.text) > options.max_words
        )
        long_silence = (
            options.max_silence_seconds is not None
            and following is not None
            and following.start - token.end >= options.max_silence_seconds
        )
        too_long = (
            options.max_segment_seconds is not None
            and token.end - current[0].start >= options.max_segment_seconds
        )
        if _ends_sentence(tokens, index) or over_words or long_silence or too_long:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    segments = []
    word_count = 0
    for group in groups:
        ordered = sorted(group, key=lambda t: t.start)
        words = _words(ordered)
        word_count += len(words)
        segments.append(
            Segment(
                text="".join(t.text for t in group).strip(),
                start=ordered[0].start,
                end=ordered[-1].end,
                confidence=_geometric_mean([t.confidence for t in ordered]),
                words=tuple(words) if options.word_timestamps else (),
            )
        )
    return Transcript(
        text="".join(t.text for group in groups for t in group).strip(),
        segments=tuple(segments),
        word_count=word_count,
        token_ids=tuple(t.id for group in groups for t in sorted(group, key=lambda t: t.start)),
    )
