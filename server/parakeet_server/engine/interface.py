"""The narrow interface the server needs from a model backend, in-process or not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from parakeet_server.domain import (
    BlockResult,
    BlockSchedule,
    MemoryFigures,
    ModelInfo,
    Phrase,
    Progress,
    Transcript,
    TranscriptionOptions,
)


class TranscriptionEngine(Protocol):
    """A loaded model. Only the model worker's thread calls the methods, except `info`,
    `samples_for_frames`, `release` and `memory`, which any thread may use."""

    info: ModelInfo

    def warm_up(self) -> float: ...

    def transcribe(self, samples: np.ndarray, options: TranscriptionOptions) -> Transcript: ...

    def transcribe_batch(
        self, requests: list[tuple[np.ndarray, TranscriptionOptions]]
    ) -> list[Transcript]:
        """Recordings of at most one chunk each, batched through the encoder; each result is
        what `transcribe` gives alone."""

    def transcribe_steps(
        self, samples: np.ndarray, options: TranscriptionOptions, *, segments: bool = True
    ) -> Iterator[Progress]: ...

    def samples_for_frames(self, frames: int) -> int: ...

    def open_stream(self, settings: BlockSchedule, phrases: tuple[Phrase, ...] = ()) -> object:
        """A handle for a new live stream that boosts `phrases`, passed back to stream_blocks
        and stream_finish."""

    def check_phrases(self, phrases: tuple[Phrase, ...]) -> None:
        """Raises InvalidRequest naming a phrase the model's vocabulary cannot write."""

    def stream_blocks(self, blocks: list[tuple[object, np.ndarray]]) -> list[BlockResult]:
        """Gives each stream (session, new samples) its samples and runs the blocks they
        complete, the streams' blocks batched through the encoder; one result per stream."""

    def stream_finish(
        self, session: object, samples: np.ndarray, options: TranscriptionOptions
    ) -> tuple[Transcript, BlockResult]: ...

    def release(self, handle: object) -> None:
        """Forgets a stream or a stepwise transcription that will not be used again."""

    def memory(self) -> MemoryFigures:
        """What the model's process holds: MLX arrays, MLX's reuse cache, the C heap."""

    def close(self) -> None: ...
