"""Per-request performance figures: the PERF log line and the RequestMetrics they fill."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestFigures:
    """How long one request took, and for how much audio and text."""

    audio_seconds: float
    processing_seconds: float
    word_count: int
    decode_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    cache_hit: bool = False
    audio_cache_hit: bool = False
    chunk_count: int = 1

    @property
    def real_time_factor(self) -> float:
        return self.processing_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def words_per_second(self) -> float:
        return self.word_count / self.processing_seconds if self.processing_seconds else 0.0

    @property
    def milliseconds_per_word(self) -> float:
        return self.processing_seconds * 1000 / self.word_count if self.word_count else 0.0

    def perf_line(self) -> str:
        """The roadmap's one-line summary, e.g.
        `PERF audio=1.90s words=5 time=0.088s rtf=0.046 wps=56.8 ms_per_word=17.6`."""
        return (
            f"PERF audio={self.audio_seconds:.2f}s words={self.word_count} "
            f"time={self.processing_seconds:.3f}s rtf={self.real_time_factor:.3f} "
            f"wps={self.words_per_second:.1f} ms_per_word={self.milliseconds_per_word:.1f} "
            f"decode={self.decode_seconds:.3f}s queue={self.queue_seconds:.3f}s "
            f"infer={self.inference_seconds:.3f}s chunks={self.chunk_count} "
            f"cache_hit={str(self.cache_hit).lower()} "
            f"audio_cache_hit={str(self.audio_cache_hit).lower()}"
        )
