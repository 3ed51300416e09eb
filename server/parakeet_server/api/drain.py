"""Shutting down without dropping work: new transcription calls are refused with UNAVAILABLE
while the ones in flight finish.

gRPC's own `server.stop(grace)` cancels a call that arrives on an open connection after it
began, and the client sees CANCELLED, which clients and load balancers do not retry. So the
server closes this gate first: from then on a new call gets UNAVAILABLE with a reason, the
calls already running (an open dictation stream included) go on, and `drained` says when
they are done; only then is gRPC stopped. Health and reflection stay open and uncounted, so
health checks keep answering NOT_SERVING during the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from parakeet_server.api.grpc_types import Context, Handler, ServerInterceptor
from parakeet_server.api.handlers import (
    OPEN_SERVICES,
    Behaviour,
    refusal,
    response_of,
    responses_of,
    same_shape,
    split_method,
)

REFUSED = (
    "the server is shutting down and takes no new calls; retry on another server, or on this "
    "one once its health is SERVING again"
)


class DrainGate(ServerInterceptor):
    """Counts the transcription calls in flight; once closed, refuses new ones."""

    def __init__(self, on_idle: Callable[[], None] | None = None) -> None:
        """`on_idle` is called (on the event loop) each time the last running call ends."""
        self._on_idle = on_idle
        self._running = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return self._running

    def close(self) -> None:
        """New transcription calls are refused from now on."""
        self._closed = True

    async def drained(self, timeout: float) -> bool:
        """Waits until no transcription call is running, at most `timeout` seconds; whether
        they all finished."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
            return False
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        service, rpc = split_method(handler_call_details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        if self._closed:
            return refusal(handler, rpc, grpc.StatusCode.UNAVAILABLE, REFUSED)
        return same_shape(handler, self._count_unary, self._count_streaming)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()
                if self._on_idle is not None:
                    self._on_idle()

    def _count_unary(self, behaviour: Behaviour) -> Behaviour:
        async def unary(request: Any, context: Context) -> Any:
            with self._counted():
                return await response_of(behaviour, request, context)

        return unary

    def _count_streaming(self, behaviour: Behaviour) -> Behaviour:
        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            with self._counted():
                async for response in responses_of(behaviour, request, context):
                    yield response

        return streaming
