"""Keeps a model process running: starts it, restarts it when it dies, recycles it.

Each model process has its own ModelScheduler (one thread on the server's side making its calls
in turn). Requests lease the current worker for their whole life, so a stream keeps talking to
the process that holds its state: when a worker is recycled (after --worker-max-requests
requests or past --worker-max-memory-mb), a new one is loaded and warmed first, new requests go
to it, and the old one is closed once its last lease ends. When a worker dies, its in-flight
calls fail with UNAVAILABLE, health turns NOT_SERVING, and a new worker is started with
exponential back-off until one comes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass

from parakeet_server.domain import ModelInfo
from parakeet_server.errors import ModelLoadError, ModelUnavailable
from parakeet_server.workers.process import ModelProcess
from parakeet_server.workers.protocol import ModelSpec
from parakeet_server.workers.remote import describe_exit
from parakeet_server.workers.scheduler import BatchPolicy

log = logging.getLogger("parakeet_server.supervisor")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class RecyclePolicy:
    """When a healthy worker is replaced: 0 disables a limit."""

    max_requests: int = 0
    max_memory_bytes: int = 0


class Supervisor:
    """The current model worker, its restarts and its replacements."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        max_pending: int,
        recycle: RecyclePolicy = RecyclePolicy(),
        on_serving: Callable[[bool], Awaitable[None]] | None = None,
        batching: BatchPolicy | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self._spec = spec
        self._max_pending = max_pending
        self._batching = batching
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._recycle = recycle
        self._on_serving = on_serving
        self.current: ModelProcess | None = None
        self.info: ModelInfo | None = None
        self.restarts = 0
        self.recycles = 0
        self._generation = 0
        self._processes: set[ModelProcess] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._replacing = False
        self._closed = False

    async def start(self) -> ModelInfo:
        """Starts the first worker; raises ModelLoadError when its model cannot be loaded."""
        process = await self._launch()
        self.current = process
        assert self.info is not None
        return self.info

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[ModelProcess]:
        """The worker a request uses from start to end."""
        process = self.current
        if process is None or self._closed:
            if self._closed:
                raise ModelUnavailable("the server is shutting down")
            if self.info is None:
                raise ModelUnavailable("the model is still loading; retry when health is SERVING")
            raise ModelUnavailable(
                "the model worker is restarting after a failure; retry in a moment"
            )
        process.users += 1
        try:
            yield process
        finally:
            process.users -= 1
            process.served += 1
            self._after_lease(process)

    @property
    def pending(self) -> int:
        """Calls queued for or running on the current worker."""
        return self.current.scheduler.pending if self.current is not None else 0

    def worker_resident_bytes(self) -> int:
        return self.current.resident_bytes() if self.current is not None else 0

    def worker_memory(self) -> dict[str, int]:
        """What the current worker holds, by kind ({} while none is ready); its MLX and heap
        figures are as of its last call."""
        current = self.current
        if current is None or current.engine is None:
            return {}
        return {"resident": current.resident_bytes(), **asdict(current.engine.memory())}

    async def close(self) -> None:
        """Stops restarting and closes every worker process."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(p.close() for p in list(self._processes)), return_exceptions=True)
        self.current = None

    # -- internals -------------------------------------------------------------------------------

    async def _launch(self) -> ModelProcess:
        self._generation += 1
        started = time.perf_counter()
        process = ModelProcess(
            self._spec,
            self._generation,
            self._max_pending,
            self._batching,
            self._on_batch,
            self._on_drop,
        )
        self._processes.add(process)
        try:
            info = await process.start()
        except BaseException:
            self._processes.discard(process)
            raise
        self.info = info
        log.info(
            "model worker ready pid=%d generation=%d in %.2fs",
            process.pid,
            process.generation,
            time.perf_counter() - started,
        )
        self._spawn(self._watch(process))
        return process

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, process: ModelProcess) -> None:
        await process.wait_exit()
        self._processes.discard(process)
        if process.closing or self._closed:
            return
        exit = describe_exit(process.process)
        log.error(
            "model worker pid=%d %s; in-flight requests fail with UNAVAILABLE", process.pid, exit
        )
        # Fails what is queued for it, and frees its thread.
        await process.close(
            because=f"the model worker process (pid {process.pid}) {exit}; the server is "
            "restarting it: retry in a moment"
        )
        if process is self.current:
            self.current = None
            await self._set_serving(False)
            self._spawn(self._restart())

    async def _restart(self) -> None:
        delay = _BACKOFF_FIRST
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                process = await self._launch()
            except ModelLoadError as error:
                log.error("model worker restart failed (retry in %.1fs): %s", delay * 2, error)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            if self._closed:
                await process.close()
                return
            self.restarts += 1
            self.current = process
            log.warning("model worker restarted pid=%d restarts=%d", process.pid, self.restarts)
            await self._set_serving(True)
            return

    def _after_lease(self, process: ModelProcess) -> None:
        if process.retired:
            if process.users == 0 and not process.closing:
                self._spawn(process.close())
            return
        if process is not self.current or self._replacing or self._closed:
            return
        reason = self._recycle_reason(process)
        if reason:
            self._replacing = True
            self._spawn(self._replace(process, reason))

    def _recycle_reason(self, process: ModelProcess) -> str:
        policy = self._recycle
        if policy.max_requests and process.served >= policy.max_requests:
            return f"after {process.served} requests"
        if policy.max_memory_bytes:
            resident = process.resident_bytes()
            if resident > policy.max_memory_bytes:
                return f"at {resident / 1e6:.0f} MB resident"
        return ""

    async def _replace(self, old: ModelProcess, reason: str) -> None:
        """Loads a new worker while the old one serves, then switches and drains the old one."""
        try:
            log.info("model worker pid=%d is being recycled %s", old.pid, reason)
            try:
                new = await self._launch()
            except ModelLoadError as error:
                log.error("model worker recycling failed, keeping the old one: %s", error)
                return
            if self._closed or old is not self.current:
                await new.close()
                return
            self.current = new
            self.recycles += 1
            old.retired = True
            log.info(
                "model worker recycled old_pid=%d new_pid=%d recycles=%d",
                old.pid,
                new.pid,
                self.recycles,
            )
            if old.users == 0:
                await old.close()
        finally:
            self._replacing = False

    async def _set_serving(self, serving: bool) -> None:
        if self._on_serving is not None:
            await self._on_serving(serving)
