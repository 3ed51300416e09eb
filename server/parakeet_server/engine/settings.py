"""Engine settings as plain data, importable without MLX."""

from __future__ import annotations

from dataclasses import dataclass


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
class StreamingSettings:
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
