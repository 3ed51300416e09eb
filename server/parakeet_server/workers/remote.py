"""The server's side of the model process: a TranscriptionEngine whose calls cross a pipe.

Calls are made by the scheduler's thread (scheduler.py), one at a time, exactly as they would be
on an in-process engine; `info`, `samples_for_frames`, `release` and `memory` are safe from any
thread. When the process dies, every call fails fast with ModelProcessDied (UNAVAILABLE).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

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
from parakeet_server.errors import ModelUnavailable
from parakeet_server.workers.protocol import Operation, Reply, send_call


class ModelProcessDied(ModelUnavailable):
    """The model process exited while the request needed it."""


@dataclass(frozen=True)
class StreamHandle:
    """A live stream in the model process."""

    id: int
    settings: BlockSchedule
    phrases: tuple[Phrase, ...] = ()


def describe_exit(process: BaseProcess, wait: float = 0.5) -> str:
    """'was killed by SIGKILL', 'exited with code 3', or 'stopped answering' if it still runs.

    Two threads ask at once when a worker dies mid-call: the supervisor's watcher (on the event
    loop) and the model worker's thread whose call read EOF. Only one of them reaps the process;
    until it has stored the exit code, the other finds none (its waitpid sees no child). So
    this keeps looking for up to `wait` seconds rather than trusting one join.
    """
    deadline = time.monotonic() + wait
    process.join(wait)
    code = process.exitcode
    while code is None and time.monotonic() < deadline:
        time.sleep(0.01)
        code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class RemoteEngine:
    """A model loaded in a worker process."""

    def __init__(self, connection: Connection, process: BaseProcess, info: ModelInfo) -> None:
        self.info = info
        self.process = process
        self._connection = connection
        self._ids = itertools.count(1)
        self._released: list[int] = []
        self._opened: set[int] = set()  # streams whose session the worker holds
        self._lock = threading.Lock()
        self._memory = MemoryFigures()
        self._dead = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def call(self, operation: Operation, *args: Any) -> Any:
        """Runs `operation` in the model process; the scheduler's thread only."""
        if self._dead:
            raise self._died()
        with self._lock:
            released, self._released = self._released, []
        try:
            send_call(self._connection, operation, args, released)
            status, value, memory = self._connection.recv()
        except (EOFError, OSError) as error:
            self._dead = True
            raise self._died() from error
        self._memory = memory
        if status is Reply.ERROR:
            raise value
        return value

    def _died(self) -> ModelProcessDied:
        return ModelProcessDied(
            f"the model worker process (pid {self.pid}) {describe_exit(self.process)} while "
            "this request needed it; the server is restarting it: retry in a moment"
        )

    def warm_up(self) -> float:
        return self.info.warmup_seconds  # done by the worker process before it said ready

    def transcribe(self, samples: np.ndarray, options: TranscriptionOptions) -> Transcript:
        result: Transcript = self.call(Operation.TRANSCRIBE, samples, options)
        return result

    def transcribe_batch(
        self, requests: list[tuple[np.ndarray, TranscriptionOptions]]
    ) -> list[Transcript]:
        options = [options for _, options in requests]
        result: list[Transcript] = self.call(
            Operation.TRANSCRIBE_BATCH, options, *(samples for samples, _ in requests)
        )
        return result

    def transcribe_steps(
        self, samples: np.ndarray, options: TranscriptionOptions, *, segments: bool = True
    ) -> Iterator[Progress]:
        return RemoteSteps(self, next(self._ids), samples, options, segments)

    def samples_for_frames(self, frames: int) -> int:
        return self.info.samples_for_frames(frames)

    def open_stream(self, settings: BlockSchedule, phrases: tuple[Phrase, ...] = ()) -> object:
        # Opened in the worker by its first block: no call here.
        return StreamHandle(next(self._ids), settings, phrases)

    def check_phrases(self, phrases: tuple[Phrase, ...]) -> None:
        self.call(Operation.CHECK_PHRASES, phrases)

    def _opening(self, session: StreamHandle) -> tuple[int, BlockSchedule, tuple[Phrase, ...]]:
        """What the worker needs of a stream: its phrases only until it has opened it (a
        thousand of them would cross the pipe with every block)."""
        with self._lock:
            opened = session.id in self._opened
        phrases = () if opened else session.phrases
        return session.id, session.settings, phrases

    def stream_blocks(self, blocks: list[tuple[object, np.ndarray]]) -> list[BlockResult]:
        sessions = [session for session, _ in blocks]
        assert all(isinstance(s, StreamHandle) for s in sessions)
        handles = [self._opening(s) for s in sessions if isinstance(s, StreamHandle)]
        # The arrays as arguments of their own: they cross as raw bytes, not pickled.
        result: list[BlockResult] = self.call(
            Operation.STREAM_BLOCKS, handles, *(samples for _, samples in blocks)
        )
        with self._lock:
            self._opened.update(handle for handle, _, _ in handles)
        return result

    def stream_finish(
        self, session: object, samples: np.ndarray, options: TranscriptionOptions
    ) -> tuple[Transcript, BlockResult]:
        assert isinstance(session, StreamHandle)
        try:
            result: tuple[Transcript, BlockResult] = self.call(
                Operation.STREAM_FINISH, *self._opening(session), samples, options
            )
        finally:
            with self._lock:
                self._opened.discard(session.id)  # the worker forgets it after its last call
        return result

    def release(self, handle: object) -> None:
        """Tells the worker, with the next call, to forget a stream or a stepwise job."""
        if isinstance(handle, StreamHandle | RemoteSteps):
            with self._lock:
                self._released.append(handle.id)
                self._opened.discard(handle.id)

    def memory(self) -> MemoryFigures:
        return self._memory  # as of the last call

    def close(self) -> None:
        """Ends the worker process (it frees the model itself); kills it if it does not go."""
        try:
            if not self._dead:
                self.call(Operation.CLOSE)
        except ModelUnavailable:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()


class RemoteSteps(Iterator[Progress]):
    """A stepwise transcription running in the worker: each next() is one call."""

    def __init__(
        self,
        engine: RemoteEngine,
        handle: int,
        samples: np.ndarray,
        options: TranscriptionOptions,
        segments: bool,
    ) -> None:
        self.id = handle
        self._engine = engine
        self._start: tuple[Any, ...] | None = (handle, samples, options, segments)
        self._done = False

    def __next__(self) -> Progress:
        if self._done:
            raise StopIteration
        if self._start is not None:
            args, self._start = self._start, None
            progress = self._engine.call(Operation.STEPS_START, *args)
        else:
            progress = self._engine.call(Operation.STEPS_NEXT, self.id)
        if progress is None:
            self._done = True
            raise StopIteration
        if progress.transcript is not None:
            self._done = True  # the worker forgot it with its last step
        result: Progress = progress
        return result
