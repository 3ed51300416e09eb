"""Logging setup: key=value text lines, or one JSON object per line with --log-format json.

A record logged with `extra={"fields": {...}}` (see `request_fields`) carries its figures as
JSON fields of their own; the text format keeps them in the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from parakeet_server.ops.perf import RequestFigures


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update((key, value) for key, value in fields.items() if key not in entry)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def request_fields(
    rpc: str,
    request_id: str,
    peer: str,
    status: str,
    figures: RequestFigures | None = None,
    **more: object,
) -> dict[str, dict[str, object]]:
    """`extra=` for a request's log line: its id, peer, status and PERF figures as fields."""
    fields: dict[str, object] = {
        "request_id": request_id,
        "rpc": rpc,
        "peer": peer,
        "status": status,
    }
    if figures is not None:
        fields.update(
            audio_seconds=round(figures.audio_seconds, 3),
            words=figures.word_count,
            processing_seconds=round(figures.processing_seconds, 4),
            rtf=round(figures.real_time_factor, 4),
            words_per_second=round(figures.words_per_second, 1),
            ms_per_word=round(figures.milliseconds_per_word, 1),
            decode_seconds=round(figures.decode_seconds, 4),
            queue_seconds=round(figures.queue_seconds, 4),
            inference_seconds=round(figures.inference_seconds, 4),
            chunks=figures.chunk_count,
            cache_hit=figures.cache_hit,
            audio_cache_hit=figures.audio_cache_hit,
        )
    fields.update(more)
    return {"fields": fields}


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
