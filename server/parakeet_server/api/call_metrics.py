"""A grpc.aio server interceptor feeding ServerMetrics: every call's status, and the figures
of each transcription read from the responses (`metrics`, `finalization_latency_seconds`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from parakeet_server.api.grpc_types import Context, Handler, ServerInterceptor
from parakeet_server.api.handlers import response_of, responses_of, same_shape, split_method
from parakeet_server.ops.prometheus import ServerMetrics


class MetricsInterceptor(ServerInterceptor):
    """Counts each call by status once it ends, including aborted and cancelled ones.

    Every handler of this server is async (the service, aio health and reflection); the
    wrappers call them on the event loop as grpc.aio would.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, rpc = split_method(handler_call_details.method)
        call = _Call(self._metrics, service, rpc)
        return same_shape(handler, call.wrap_unary, call.wrap_stream)


class _Call:
    def __init__(self, metrics: ServerMetrics, service: str, rpc: str) -> None:
        self._metrics = metrics
        self._service = service
        self._rpc = rpc

    def wrap_unary(self, behavior: Any) -> Callable[[Any, Context], Awaitable[Any]]:
        async def unary(request: Any, context: Context) -> Any:
            self._metrics.in_flight.labels(self._rpc).inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await response_of(behavior, request, context)
                self._observe(response)
                code = _code(context)
                return response
            except BaseException as error:
                code = _failure_code(error, context)
                raise
            finally:
                self._finish(code)

        return unary

    def wrap_stream(self, behavior: Any) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            self._metrics.in_flight.labels(self._rpc).inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                async for response in responses_of(behavior, request, context):
                    self._observe(response)
                    yield response
                code = _code(context)
            except BaseException as error:
                code = _failure_code(error, context)
                raise
            finally:
                self._finish(code)

        return streaming

    def _observe(self, response: Any) -> None:
        """A response carrying the figures of a finished transcription feeds the histograms."""
        if not isinstance(response, Message):
            return
        fields = response.DESCRIPTOR.fields_by_name
        if "utterance" in fields and response.HasField("utterance"):
            self._observe_utterance(response)
        if "metrics" not in fields or not response.HasField("metrics"):
            return
        # Any of the service's responses with figures: Transcribe, TranscribeLong, streams.
        message: Any = response
        if "is_final" in fields and not message.is_final:
            return
        figures = message.metrics
        self._metrics.observe_transcription(
            self._rpc,
            figures.audio_seconds,
            figures.processing_seconds,
            figures.real_time_factor,
            message.finalization_latency_seconds
            if "finalization_latency_seconds" in fields
            else None,
        )

    def _observe_utterance(self, response: Any) -> None:
        """A stream's response closing an utterance (endpointing)."""
        utterance = response.utterance
        reason = utterance.DESCRIPTOR.enum_types_by_name["EndReason"].values_by_number.get(
            utterance.end_reason
        )
        name = reason.name.removeprefix("END_REASON_").lower() if reason else "unspecified"
        self._metrics.observe_utterance(
            name, utterance.end_of_speech_latency_seconds if name == "silence" else None
        )

    def _finish(self, code: grpc.StatusCode) -> None:
        self._metrics.in_flight.labels(self._rpc).dec()
        self._metrics.requests.labels(self._service, self._rpc, code.name).inc()


def _code(context: Context) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _failure_code(error: BaseException, context: Context) -> grpc.StatusCode:
    if isinstance(error, grpc.aio.AbortError):
        return _code(context)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
