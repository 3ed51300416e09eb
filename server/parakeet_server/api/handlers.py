"""Pieces the server's interceptors share: a method's name, a handler rebuilt around new
behaviour in the same shape, and a handler that only refuses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from parakeet_server.api.grpc_types import Context, Handler
from parakeet_server.ops.logs import request_fields

log = logging.getLogger("parakeet_server.requests")

# Load balancers and tools must reach these whatever the state of the transcription service.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

Behaviour = Callable[[Any, Context], Any]


def split_method(method: str) -> tuple[str, str]:
    """'/parakeet.v1.TranscriptionService/Transcribe' -> ('parakeet.v1.TranscriptionService',
    'Transcribe')."""
    service, _, rpc = method.lstrip("/").rpartition("/")
    return service, rpc


def same_shape(
    handler: Handler,
    unary: Callable[[Any], Behaviour],
    streaming: Callable[[Any], Behaviour],
) -> Handler:
    """A handler of `handler`'s shape whose behaviour is `unary(behaviour)` for calls with one
    response, `streaming(behaviour)` for calls with a stream of them."""
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                streaming(handler.stream_stream), **options
            )
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **options)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **options)
    return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)


async def response_of(behaviour: Behaviour, request: Any, context: Context) -> Any:
    """What a unary behaviour returns, awaited where it is a coroutine."""
    response = behaviour(request, context)
    if inspect.isawaitable(response):
        response = await response
    return response


async def responses_of(behaviour: Behaviour, request: Any, context: Context) -> AsyncIterator[Any]:
    """What a streaming behaviour yields: an async generator's responses, or none from a handler
    that writes with context.write() and returns None."""
    responses = behaviour(request, context)
    if inspect.isasyncgen(responses):
        async for response in responses:
            yield response
    elif inspect.isawaitable(responses):
        await responses


def refusal(handler: Handler, rpc: str, status: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same shape as `handler` that logs the call and aborts it."""

    async def refuse(request: Any, context: Context) -> NoReturn:
        log.info(
            "request rpc=%s peer=%s status=%s message=%r",
            rpc,
            context.peer(),
            status.name,
            message,
            extra=request_fields(rpc, "-", context.peer(), status.name, error=message),
        )
        await context.abort(status, message)

    async def refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await refuse(request, context)
        yield  # pragma: no cover - never reached; makes this an async generator

    return same_shape(handler, lambda _: refuse, lambda _: refuse_stream)
