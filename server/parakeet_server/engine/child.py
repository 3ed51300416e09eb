"""The model worker process: loads the model, then answers the server's calls over a pipe.

Runs in a child process started by supervisor.py, so that a crash inside MLX or an
out-of-memory kill takes down this process only. Everything happens on its main thread (the
one thread that ever touches MLX here), one call at a time.

Protocol on the connection: first this process sends ("ready", ModelInfo) or ("failed",
message); then for each (operation, args, released handles) it receives, it answers
("ok", result, memory) or ("error", exception, memory), where memory is MLX's (active, cache)
bytes. ("close", (), []) ends it.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from parakeet_server.engine.settings import ChunkingConfig, StreamingSettings
from parakeet_server.errors import ModelLoadError, ParakeetError
from parakeet_server.transcript import BlockResult, Progress, Transcript, TranscriptionOptions

log = logging.getLogger("parakeet_server.worker")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What the worker process loads, and how it logs."""

    model: str
    dtype: str = "auto"
    blas: str | None = None
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    log_level: str = "info"
    log_format: str = "text"


class WorkerError(ParakeetError):
    """An unexpected failure inside the worker process (its log has the traceback)."""


class Operations:
    """The calls the server may make; handles name streams and stepwise transcriptions."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._handles: dict[int, Any] = {}

    def transcribe(self, samples: np.ndarray, options: TranscriptionOptions) -> Transcript:
        result: Transcript = self._engine.transcribe(samples, options)
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

    def stream_block(
        self, handle: int, settings: StreamingSettings, samples: np.ndarray
    ) -> BlockResult:
        result: BlockResult = self._engine.stream_block(self._session(handle, settings), samples)
        return result

    def stream_finish(
        self,
        handle: int,
        settings: StreamingSettings,
        samples: np.ndarray,
        options: TranscriptionOptions,
    ) -> tuple[Transcript, BlockResult]:
        try:
            result: tuple[Transcript, BlockResult] = self._engine.stream_finish(
                self._session(handle, settings), samples, options
            )
            return result
        finally:
            self._handles.pop(handle, None)

    def release(self, handles: list[int]) -> None:
        for handle in handles:
            self._handles.pop(handle, None)

    def _session(self, handle: int, settings: StreamingSettings) -> Any:
        session = self._handles.get(handle)
        if session is None:
            session = self._handles[handle] = self._engine.open_stream(settings)
        return session


def worker_main(connection: Connection, spec: WorkerSpec) -> None:
    """The worker process's entry point."""
    # The server decides when this process ends: Ctrl-C and SIGTERM reach the whole process
    # group, and the server drains its requests before closing the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    from parakeet_server.logs import configure_logging

    configure_logging(spec.log_level, spec.log_format)
    from parakeet_server.engine.model import ParakeetEngine, release_thread_resources

    try:
        engine = ParakeetEngine.load(
            spec.model, dtype=spec.dtype, blas=spec.blas, chunking=spec.chunking
        )
        engine.warm_up()
    except ModelLoadError as error:
        connection.send(("failed", str(error)))
        release_thread_resources()
        return
    except Exception as error:
        log.exception("the model could not be loaded")
        connection.send(("failed", f"{type(error).__name__}: {error}"))
        release_thread_resources()
        return
    connection.send(("ready", engine.info))
    try:
        _serve(connection, engine)
    finally:
        engine.close()
        release_thread_resources()


def _serve(connection: Connection, engine: Any) -> None:
    operations = Operations(engine)
    while True:
        try:
            name, args, released = connection.recv()
        except (EOFError, OSError):
            return  # the server is gone
        operations.release(released)
        if name == "close":
            connection.send(("ok", None, engine.memory()))
            return
        try:
            result = getattr(operations, name)(*args)
        except ParakeetError as error:
            connection.send(("error", error, engine.memory()))
        except Exception as error:
            log.error("worker operation %s failed:\n%s", name, traceback.format_exc())
            failure = WorkerError(f"internal error in the model worker: {type(error).__name__}")
            connection.send(("error", failure, engine.memory()))
        else:
            connection.send(("ok", result, engine.memory()))


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the server dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
