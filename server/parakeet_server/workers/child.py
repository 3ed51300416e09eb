"""The model process: loads the model, then answers the server's calls over a pipe.

Runs in a child process started by process.py, so that a crash inside MLX or an out-of-memory
kill takes down this process only. Everything happens on its main thread (the one thread that
ever touches MLX here), one call at a time; protocol.py says what crosses the pipe. MLX is
imported here only inside the child, through the engine.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from parakeet_server.domain import (
    BlockResult,
    BlockSchedule,
    Phrase,
    Progress,
    Transcript,
    TranscriptionOptions,
)
from parakeet_server.errors import ModelLoadError, ParakeetError
from parakeet_server.workers.protocol import (
    Handshake,
    ModelSpec,
    Operation,
    Reply,
    receive_call,
)

log = logging.getLogger("parakeet_server.worker")

_PR_SET_PDEATHSIG = 1


class ModelProcessError(ParakeetError):
    """An unexpected failure inside the model process (its log has the traceback)."""


class Operations:
    """What each Operation does to the engine; handles name streams and stepwise jobs."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._handles: dict[int, Any] = {}

    def transcribe(self, samples: np.ndarray, options: TranscriptionOptions) -> Transcript:
        result: Transcript = self._engine.transcribe(samples, options)
        return result

    def transcribe_batch(
        self, options: list[TranscriptionOptions], *samples: np.ndarray
    ) -> list[Transcript]:
        result: list[Transcript] = self._engine.transcribe_batch(
            list(zip(samples, options, strict=True))
        )
        return result

    def steps_start(
        self, handle: int, samples: np.ndarray, options: TranscriptionOptions, segments: bool
    ) -> Progress | None:
        self._handles[handle] = self._engine.transcribe_steps(samples, options, segments=segments)
        return self.steps_next(handle)

    def steps_next(self, handle: int) -> Progress | None:
        steps: Iterator[Progress] = self._handles[handle]
        progress = next(steps, None)
        if progress is None or progress.transcript is not None:
            del self._handles[handle]
        return progress

    def stream_blocks(
        self, handles: list[tuple[int, BlockSchedule, tuple[Phrase, ...]]], *samples: np.ndarray
    ) -> list[BlockResult]:
        blocks = [
            (self._session(handle, schedule, phrases), pcm)
            for (handle, schedule, phrases), pcm in zip(handles, samples, strict=True)
        ]
        result: list[BlockResult] = self._engine.stream_blocks(blocks)
        return result

    def stream_finish(
        self,
        handle: int,
        settings: BlockSchedule,
        phrases: tuple[Phrase, ...],
        samples: np.ndarray,
        options: TranscriptionOptions,
    ) -> tuple[Transcript, BlockResult]:
        try:
            result: tuple[Transcript, BlockResult] = self._engine.stream_finish(
                self._session(handle, settings, phrases), samples, options
            )
            return result
        finally:
            self._handles.pop(handle, None)

    def check_phrases(self, phrases: tuple[Phrase, ...]) -> None:
        self._engine.check_phrases(phrases)

    def release(self, handles: list[int]) -> None:
        for handle in handles:
            self._handles.pop(handle, None)

    def dispatch(self, operation: Operation, args: tuple[Any, ...]) -> Any:
        methods: dict[Operation, Callable[..., Any]] = {
            Operation.TRANSCRIBE: self.transcribe,
            Operation.TRANSCRIBE_BATCH: self.transcribe_batch,
            Operation.STEPS_START: self.steps_start,
            Operation.STEPS_NEXT: self.steps_next,
            Operation.STREAM_BLOCKS: self.stream_blocks,
            Operation.STREAM_FINISH: self.stream_finish,
            Operation.CHECK_PHRASES: self.check_phrases,
        }
        return methods[operation](*args)

    def _session(self, handle: int, settings: BlockSchedule, phrases: tuple[Phrase, ...]) -> Any:
        session = self._handles.get(handle)
        if session is None:
            session = self._handles[handle] = self._engine.open_stream(settings, phrases)
        return session


def child_main(connection: Connection, spec: ModelSpec) -> None:
    """The model process's entry point."""
    # The server decides when this process ends: Ctrl-C and SIGTERM reach the whole process
    # group, and the server drains its requests before closing the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    # PYTHONTRACEMALLOC is for the server process (ops/memory_report.py); here it would only
    # slow the model's loading and steps several times over.
    tracemalloc.stop()
    from parakeet_server.ops.logs import configure_logging

    configure_logging(spec.log_level, spec.log_format)
    from parakeet_server.engine.runtime import release_thread_resources, use_fast_blas

    use_fast_blas(spec.blas)  # before anything imports mlx
    from parakeet_server.engine.model import ParakeetEngine

    try:
        engine = ParakeetEngine.load(
            spec.model, dtype=spec.dtype, blas=spec.blas, chunking=spec.chunking
        )
        engine.warm_up()
    except ModelLoadError as error:
        connection.send((Handshake.FAILED, str(error)))
        release_thread_resources()
        return
    except Exception as error:
        log.exception("the model could not be loaded")
        connection.send((Handshake.FAILED, f"{type(error).__name__}: {error}"))
        release_thread_resources()
        return
    connection.send((Handshake.READY, engine.info))
    try:
        _serve(connection, engine)
    finally:
        engine.close()
        release_thread_resources()


def _serve(connection: Connection, engine: Any) -> None:
    operations = Operations(engine)
    while True:
        try:
            operation, args, released = receive_call(connection)
        except (EOFError, OSError):
            return  # the server is gone
        operations.release(released)
        if operation is Operation.CLOSE:
            connection.send((Reply.OK, None, engine.memory()))
            return
        try:
            result = operations.dispatch(operation, args)
        except ParakeetError as error:
            connection.send((Reply.ERROR, error, engine.memory()))
        except Exception as error:
            log.error(
                "model process operation %s failed:\n%s", operation.value, traceback.format_exc()
            )
            failure = ModelProcessError(
                f"internal error in the model process: {type(error).__name__}"
            )
            connection.send((Reply.ERROR, failure, engine.memory()))
        else:
            connection.send((Reply.OK, result, engine.memory()))


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the server dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
