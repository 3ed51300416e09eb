"""The one owner of an engine: a single thread that loads it and runs every job in turn.

In the server the engine is the model process (remote.py), which answers one call at a time;
MLX state is not meant for concurrent threads either. Requests queue here; the queue is bounded
so that overload becomes an immediate, explicit error instead of unbounded latency. A request
takes its place in the queue (`admit`) before it does any expensive work of its own, such as
decoding its audio, so that a burst beyond the limit is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from parakeet_server.engine.interface import TranscriptionEngine
from parakeet_server.errors import DeadlineExceeded, ModelUnavailable, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")


E = TypeVar("E", bound=TranscriptionEngine)


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A job's result with the time it waited for the model and the time it ran."""

    value: T
    queue_seconds: float
    run_seconds: float


class ModelScheduler(Generic[E]):
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

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Holds a place in the queue for a whole request, from before its audio is decoded to
        its last job; raises Overloaded at once when the queue is full. Jobs run inside it pass
        `admitted=True`."""
        self._usable_engine()
        self._take_place()
        try:
            yield
        finally:
            self._release(None)

    async def run(
        self,
        job: Callable[[E], T],
        *,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> Timed[T]:
        """Runs `job(engine)` on the model thread once the jobs before it are done.

        `deadline` is a time.monotonic() value; a job still queued when it passes, or whose
        caller was cancelled, is dropped without running. A job of an admitted request takes
        no second place in the queue.
        """
        engine = self._usable_engine()
        if not admitted:
            self._take_place()
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
        if not admitted:
            future.add_done_callback(self._release)
        # Cancelling the awaiting task cancels a job that has not started yet.
        return await asyncio.wrap_future(future)

    def _usable_engine(self) -> E:
        if self._engine is None or self._closed:
            raise ModelUnavailable(
                "the model is not loaded yet" if not self._closed else self._closed_because
            )
        return self._engine

    def _take_place(self) -> None:
        with self._lock:
            if self._pending >= self._max_pending:
                raise Overloaded(
                    f"{self._pending} requests are already queued for the model "
                    f"(limit {self._max_pending}); retry in a moment"
                )
            self._pending += 1

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
            except asyncio.TimeoutError:
                log.warning("the model thread did not finish within %.0f s", timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
