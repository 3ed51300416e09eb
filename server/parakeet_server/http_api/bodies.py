"""The bodies of the OpenAI-style API: a transcript in each `response_format`, the model list,
and the error object. Plain data in, (content type, text) or JSON-ready dicts out."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from parakeet_client.formats import to_srt, to_vtt
from parakeet_server.domain import Segment, Transcript

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")


@dataclass(frozen=True)
class Answer:
    """What a transcription request asked to see."""

    response_format: str = "json"
    granularities: frozenset[str] = frozenset({"segment"})
    language: str = ""

    @property
    def words(self) -> bool:
        """Word timestamps are worth computing only where they are shown."""
        return self.response_format == "verbose_json" and "word" in self.granularities


def transcription_body(
    answer: Answer, transcript: Transcript, *, model: str, duration: float
) -> tuple[str, str | dict[str, object]]:
    """(content type, body): a dict goes out as JSON, a str as it is."""
    if answer.response_format == "text":
        return "text/plain", transcript.text + "\n"
    if answer.response_format == "srt":
        return "application/x-subrip", to_srt(transcript.segments)
    if answer.response_format == "vtt":
        return "text/vtt", to_vtt(transcript.segments)
    if answer.response_format == "json":
        return "application/json", {"text": transcript.text, "model": model}
    body: dict[str, object] = {
        "task": "transcribe",
        # Parakeet does not report a language: the one asked for, else "und" (undetermined).
        "language": answer.language or "und",
        "duration": round(duration, 3),
        "text": transcript.text,
        "model": model,
    }
    # Segments always (as whisper-1 gives them); words when asked for, which costs a little.
    body["segments"] = [_segment(i, s) for i, s in enumerate(transcript.segments)]
    if answer.words:
        body["words"] = [
            {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
            for segment in transcript.segments
            for w in segment.words
        ]
    return "application/json", body


def _segment(index: int, segment: Segment) -> dict[str, object]:
    """Whisper's segment fields; those Parakeet has no notion of get neutral values."""
    encoded = segment.text.encode()
    return {
        "id": index,
        "seek": 0,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": round(math.log(max(segment.confidence, 1e-10)), 4),
        "compression_ratio": round(len(encoded) / len(zlib.compress(encoded)), 4)
        if encoded
        else 0.0,
        "no_speech_prob": 0.0,
    }


def models_body(model: str, created: int) -> dict[str, object]:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "parakeet"}],
    }


def error_body(message: str, kind: str, code: str) -> dict[str, object]:
    """OpenAI's error object: `type` the class of failure, `code` the particular one."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}
