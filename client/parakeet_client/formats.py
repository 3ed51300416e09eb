"""Transcripts as text files: plain text, SubRip (srt), WebVTT (vtt) and JSON, the four formats
of the parakeet-mlx command line (same timestamps, same JSON layout with words for tokens).

Plain Python on plain segments (anything with `text`, `start`, `end` in seconds), so that the
client and the server's HTTP front end share it without protobuf: the client turns its proto
Transcript into `Cue`s with `cues_from_proto`, the server passes its own Segments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "FORMATS",
    "Cue",
    "CueWord",
    "TimedText",
    "render",
    "timestamp",
    "to_json",
    "to_srt",
    "to_txt",
    "to_vtt",
]

FORMATS = ("txt", "srt", "vtt", "json")


class TimedWord(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def confidence(self) -> float: ...


class TimedText(TimedWord, Protocol):
    """A segment: the server's domain Segment and `Cue` both are one."""

    @property
    def words(self) -> Sequence[TimedWord]: ...


@dataclass(frozen=True)
class CueWord:
    text: str
    start: float
    end: float
    confidence: float = 1.0


@dataclass(frozen=True)
class Cue:
    text: str
    start: float
    end: float
    confidence: float = 1.0
    words: tuple[CueWord, ...] = ()


def timestamp(seconds: float, *, decimal_marker: str = ",") -> str:
    """`HH:MM:SS,mmm` (srt) or with `.` (vtt); rounded to the millisecond, never negative."""
    milliseconds = round(max(0.0, seconds) * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{decimal_marker}{milliseconds:03d}"


def to_txt(text: str) -> str:
    return text.strip() + "\n"


def to_srt(segments: Sequence[TimedText]) -> str:
    blocks = [
        f"{index}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text.strip()}\n"
        for index, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Sequence[TimedText]) -> str:
    blocks = [
        f"{timestamp(s.start, decimal_marker='.')} --> {timestamp(s.end, decimal_marker='.')}\n"
        f"{s.text.strip()}\n"
        for s in segments
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def _timed(item: TimedWord | TimedText) -> dict[str, object]:
    return {
        "text": item.text,
        "start": round(item.start, 3),
        "end": round(item.end, 3),
        "duration": round(item.end - item.start, 3),
        "confidence": round(item.confidence, 3),
    }


def to_json(text: str, segments: Sequence[TimedText]) -> str:
    """parakeet-mlx's layout: `text`, and `sentences` each with its `words` (parakeet-mlx has
    `tokens` there; a server answers in words)."""
    document = {
        "text": text,
        "sentences": [{**_timed(s), "words": [_timed(word) for word in s.words]} for s in segments],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render(fmt: str, text: str, segments: Sequence[TimedText]) -> str:
    """The transcript in one of FORMATS."""
    if fmt == "txt":
        return to_txt(text)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "json":
        return to_json(text, segments)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
