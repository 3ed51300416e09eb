"""One model process as the server sees it: started, waited for, watched and closed.

The process runs workers/child.py; its calls go through a ModelScheduler (one at a time, on one
thread) to a RemoteEngine (over the pipe).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable

from parakeet_server.domain import ModelInfo
from parakeet_server.errors import ModelLoadError
from parakeet_server.ops.proc import resident_bytes
from parakeet_server.workers.child import child_main
from parakeet_server.workers.protocol import Handshake, ModelSpec
from parakeet_server.workers.remote import RemoteEngine, describe_exit
from parakeet_server.workers.scheduler import BatchPolicy, ModelScheduler


class ModelProcess:
    """One model process and the scheduler whose thread talks to it."""

    def __init__(
        self,
        spec: ModelSpec,
        generation: int,
        max_pending: int,
        batching: BatchPolicy | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.generation = generation
        self.users = 0
        self.served = 0
        self.retired = False
        self.closing = False
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._connection = ours
        self.process = context.Process(
            target=child_main,
            args=(theirs, spec),
            name=f"parakeet-model-{generation}",
            daemon=True,
        )
        self.process.start()
        theirs.close()  # so that the worker's death reads as EOF on our end
        self.scheduler: ModelScheduler[RemoteEngine] = ModelScheduler(
            self._ready,
            max_pending=max_pending,
            batching=batching,
            on_batch=on_batch,
            on_drop=on_drop,
        )

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    @property
    def engine(self) -> RemoteEngine | None:
        return self.scheduler.engine

    def _ready(self) -> RemoteEngine:
        """Waits (on the worker's thread) for the process to load and warm up its model."""
        try:
            message = self._connection.recv()
        except (EOFError, OSError):
            raise ModelLoadError(
                f"the model worker process {describe_exit(self.process)} while loading the "
                "model (its log lines above say why)"
            ) from None
        if message[0] is Handshake.FAILED:
            raise ModelLoadError(message[1])
        return RemoteEngine(self._connection, self.process, message[1])

    async def start(self) -> ModelInfo:
        try:
            engine = await self.scheduler.start()
        except BaseException:
            await self.close()
            raise
        return engine.info

    def resident_bytes(self) -> int:
        """The process's resident memory (Linux; 0 where it cannot be read)."""
        return resident_bytes(self.pid)

    async def wait_exit(self) -> None:
        """Returns once the process has exited (its sentinel fd becomes readable)."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        sentinel = self.process.sentinel

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(sentinel, readable)
        try:
            await exited
        finally:
            loop.remove_reader(sentinel)
        self.process.join()

    async def close(self, *, because: str | None = None) -> None:
        self.closing = True
        await self.scheduler.close(because=because)
        if self.process.is_alive():  # closed before it was ready, or it did not stop
            self.process.kill()
        await asyncio.to_thread(self.process.join)
