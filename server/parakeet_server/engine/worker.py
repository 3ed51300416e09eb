"""The one owner of an engine: a single thread that loads it and runs every job in turn.

In the server the engine is a model worker process (remote.py), which answers one call at a
time; MLX state is not meant for concurrent threads either. Requests queue here; the queue is
bounded so that overload becomes an immediate, explicit error instead of unbounded latency.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from parakeet_server.errors import DeadlineExceeded, ModelUnavailable, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")


class Engine(Protocol):
    """The narrow interface the server needs from a model backend."""

    def warm_up(self) -> float: ...

    def close(self) -> None:
        """Releases what the engine holds on the calling (model) thread."""


E = TypeVar("E", bound=Engine)


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A job's result with the time it waited for the model and the time it ran."""

    value: T
    queue_seconds: float
    run_seconds: float


class ModelWorker(Generic[E]):
    """Runs jobs against one engine on one dedicated thread, at most `max_pending` at a time."""

    def __init__(self, load: Callable[[], E], *, max_pending: int = 64) -> None:
        self._load = load
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._engine: E | None = None
        self._closed = False
        self._closed_because = "the server is shutting down"

    @property
    def engine(self) -> E | None:
        """The loaded engine, for reading its description; never call into it directly."""
        return self._engine

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    async def start(self) -> E:
        """Loads and warms up the engine on the model thread."""

        def load_and_warm() -> E:
            engine = self._load()
            if not self._closed:
                engine.warm_up()
            if self._closed:  # shut down while loading: nobody else will close it
                engine.close()
                raise ModelUnavailable("the server shut down while the model was loading")
            return engine

        loop = asyncio.get_running_loop()
        self._engine = await loop.run_in_executor(self._executor, load_and_warm)
        return self._engine

    async def run(self, job: Callable[[E], T], *, deadline: float | None = None) -> Timed[T]:
        """Runs `job(engine)` on the model thread once the jobs before it are done.

        `deadline` is a time.monotonic() value; a job still queued when it passes, or whose
        caller was cancelled, is dropped without running.
        """
        if self._engine is None or self._closed:
            raise ModelUnavailable(
                "the model is not loaded yet" if not self._closed else self._closed_because
            )
        with self._lock:
            if self._pending >= self._max_pending:
                raise Overloaded(
                    f"{self._pending} requests are already queued for the model "
                    f"(limit {self._max_pending}); retry in a moment"
                )
            self._pending += 1
        engine = self._engine
        queued_at = time.monotonic()

        def timed_job() -> Timed[T]:
            started = time.monotonic()
            if deadline is not None and started > deadline:
                raise DeadlineExceeded(
                    f"the deadline passed after {started - queued_at:.2f} s in the queue"
                )
            value = job(engine)
            return Timed(value, started - queued_at, time.monotonic() - started)

        future = self._executor.submit(timed_job)
        future.add_done_callback(self._release)
        # Cancelling the awaiting task cancels a job that has not started yet.
        return await asyncio.wrap_future(future)

    def _release(self, _: object) -> None:
        with self._lock:
            self._pending -= 1

    async def close(self, timeout: float = 30.0, *, because: str | None = None) -> None:
        """Refuses new jobs (with `because` as the reason), drops queued ones, and closes the
        engine on the model thread.
        """
        self._closed = True
        if because is not None:
            self._closed_because = because
        engine = self._engine
        if engine is not None:
            closing = self._executor.submit(engine.close)
            try:
                await asyncio.wait_for(asyncio.wrap_future(closing), timeout)
            except TimeoutError:
                log.warning("the model thread did not finish within %.0f s", timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
