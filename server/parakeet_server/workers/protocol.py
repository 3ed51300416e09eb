"""The pipe between the server and its model process: what crosses it, and how.

Handshake: the model process sends (Handshake.READY, ModelInfo) or (Handshake.FAILED, message).
Then each call is (Operation, args, released handles) from the server, with numpy arrays sent
after it as raw bytes, and each answer is (Reply.OK, result, memory) or (Reply.ERROR, exception,
memory), memory being the process's MemoryFigures after the call. Operation.CLOSE ends the
process. Both ends import this module; it imports neither MLX nor gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from parakeet_server.domain import ChunkingConfig


class Operation(enum.Enum):
    """The calls the server makes; handles name streams and stepwise transcriptions."""

    TRANSCRIBE = "transcribe"
    TRANSCRIBE_BATCH = "transcribe_batch"
    STEPS_START = "steps_start"
    STEPS_NEXT = "steps_next"
    STREAM_BLOCKS = "stream_blocks"
    STREAM_FINISH = "stream_finish"
    CHECK_PHRASES = "check_phrases"
    CLOSE = "close"


class Handshake(enum.Enum):
    READY = "ready"
    FAILED = "failed"


class Reply(enum.Enum):
    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True)
class ModelSpec:
    """What the model process loads, and how it logs."""

    model: str
    dtype: str = "auto"
    blas: str | None = None
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    log_level: str = "info"
    log_format: str = "text"


@dataclass(frozen=True)
class ArrayFollows:
    """Stands in a call's arguments for a numpy array sent after it as raw bytes."""

    dtype: str
    shape: tuple[int, ...]


def send_call(
    connection: Connection, operation: Operation, args: tuple[Any, ...], released: list[int]
) -> None:
    """Sends a call; numpy arrays go as raw bytes straight from their buffer (pickling would
    copy an hour of audio, 230 MB, once or twice on the way)."""
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    header = tuple(
        ArrayFollows(a.dtype.str, a.shape) if isinstance(a, np.ndarray) else a for a in args
    )
    connection.send((operation, header, released))
    for array in arrays:
        connection.send_bytes(np.ascontiguousarray(array).data.cast("B"))


def receive_call(connection: Connection) -> tuple[Operation, tuple[Any, ...], list[int]]:
    """The other end of send_call."""
    operation, header, released = connection.recv()
    args = tuple(
        np.frombuffer(connection.recv_bytes(), dtype=a.dtype).reshape(a.shape)
        if isinstance(a, ArrayFollows)
        else a
        for a in header
    )
    return operation, args, released
