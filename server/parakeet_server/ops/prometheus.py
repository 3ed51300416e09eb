"""Prometheus metrics: one registry of the server's collectors, served over plain HTTP.

Knows nothing of gRPC or MLX; the interceptor and the server feed it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from parakeet_server.cache.store import CacheStats
from parakeet_server.config import split_address
from parakeet_server.ops.proc import resident_bytes

log = logging.getLogger(__name__)

NAMESPACE = "parakeet"

_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
_RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)


class CacheLike(Protocol):
    def stats(self) -> CacheStats: ...


_CACHE_GAUGES = (
    ("bytes", "bytes held by the cache"),
    ("max_bytes", "the cache's size limit in bytes"),
    ("entries", "entries held by the cache"),
)
_CACHE_COUNTERS = (
    ("hits", "lookups answered from the cache"),
    ("misses", "lookups the cache could not answer"),
    ("evictions", "entries evicted to stay under the size limit"),
    ("disk_hits", "lookups answered from the on-disk cache"),
    ("disk_rejected", "on-disk entries rejected as unreadable or stale"),
    ("disk_errors", "reads and writes of the on-disk cache that the disk refused"),
)


class CacheCollector(Collector):
    """Reads `stats()` of each registered cache at scrape time."""

    def __init__(self) -> None:
        self._caches: dict[str, CacheLike] = {}
        self._lock = threading.Lock()

    def register(self, name: str, cache: CacheLike) -> None:
        with self._lock:
            self._caches[name] = cache

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            caches = list(self._caches.items())
        snapshots = [(name, cache.stats()) for name, cache in caches]
        for field, help_text in _CACHE_GAUGES:
            gauge = GaugeMetricFamily(f"{NAMESPACE}_cache_{field}", help_text, labels=["cache"])
            for name, stats in snapshots:
                gauge.add_metric([name], getattr(stats, field))
            yield gauge
        for field, help_text in _CACHE_COUNTERS:
            counter = CounterMetricFamily(f"{NAMESPACE}_cache_{field}", help_text, labels=["cache"])
            for name, stats in snapshots:
                counter.add_metric([name], getattr(stats, field))
            yield counter


class WorkerMemoryCollector(Collector):
    """`parakeet_worker_memory_bytes{kind}`: what the model worker holds, read at scrape time
    (its resident memory, MLX's arrays, cache and peak, its C heap in use and kept free)."""

    def __init__(self, figures: Callable[[], dict[str, int]]) -> None:
        self._figures = figures

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            f"{NAMESPACE}_worker_memory_bytes",
            "memory of the model worker process by kind: resident, mlx_active, mlx_cache, "
            "mlx_peak, heap_in_use, heap_free (absent while no worker is ready)",
            labels=["kind"],
        )
        for kind, value in self._figures().items():
            gauge.add_metric([kind], value)
        yield gauge


class ServerMetrics:
    """Every collector of one server, in a registry of its own (not the process-global one)."""

    def __init__(
        self,
        queue_depth: Callable[[], int],
        stream_lag: Callable[[], float] = lambda: 0.0,
        worker_memory: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        registry.register(WorkerMemoryCollector(worker_memory))
        self.requests = Counter(
            "requests",
            "finished RPCs by service, method and gRPC status code",
            ["service", "rpc", "code"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.http_requests = Counter(
            "http_requests",
            "finished requests of the OpenAI-style HTTP API by route and HTTP status",
            ["route", "status"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.in_flight = Gauge(
            "in_flight_requests",
            "RPCs (and HTTP API requests, by route) in progress by method "
            "(StreamingTranscribe: open streams)",
            ["rpc"],
            namespace=NAMESPACE,
            registry=registry,
        )
        queue = Gauge(
            "model_queue_depth",
            "requests waiting for or running on the model",
            namespace=NAMESPACE,
            registry=registry,
        )
        queue.set_function(lambda: float(queue_depth()))
        self.audio_seconds = Counter(
            "audio_seconds",
            "seconds of audio transcribed, by method",
            ["rpc"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.processing_seconds = Histogram(
            "processing_seconds",
            "server time per transcription (decode, queue and inference), by method",
            ["rpc"],
            namespace=NAMESPACE,
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.real_time_factor = Histogram(
            "real_time_factor",
            "processing seconds per second of audio, by method",
            ["rpc"],
            namespace=NAMESPACE,
            buckets=_RTF_BUCKETS,
            registry=registry,
        )
        self.time_to_final = Histogram(
            "stream_time_to_final_seconds",
            "from a stream's half-close to its final response (finalization latency)",
            namespace=NAMESPACE,
            buckets=_TTF_BUCKETS,
            registry=registry,
        )
        self.utterances = Counter(
            "stream_utterances",
            "utterances closed by endpointing, by why: silence (a pause), max_utterance, "
            "end_of_stream (the half-close)",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.end_of_speech = Histogram(
            "stream_end_of_speech_seconds",
            "from the audio at the end of an utterance's last word reaching the server to its "
            "END_OF_UTTERANCE response, for utterances closed by a pause",
            namespace=NAMESPACE,
            buckets=_TTF_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "batch_size",
            "items per model call: live streams' blocks in one streaming step (work=stream), "
            "short recordings transcribed together (work=oneshot)",
            ["work"],
            namespace=NAMESPACE,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.step_seconds = Histogram(
            "batch_seconds",
            "model time of one batched call (a streaming step: one block of every stream in it)",
            ["work"],
            namespace=NAMESPACE,
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "model_dropped",
            "queued model work dropped without running, by reason: its deadline passed "
            "(deadline) or its caller went away (cancelled)",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        for reason in ("deadline", "cancelled"):
            self.dropped.labels(reason)  # shown as 0 from the start
        lag = Gauge(
            "stream_lag_seconds",
            "the largest backlog over the open streams: audio received but not yet encoded",
            namespace=NAMESPACE,
            registry=registry,
        )
        lag.set_function(lambda: float(stream_lag()))
        self.audio_decodes = Counter(
            "audio_decodes",
            "request audio decoded from its bytes (not answered from the audio cache)",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.worker_restarts = Counter(
            "worker_restarts",
            "times the model worker was restarted",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "model_load_seconds",
            "seconds the model took to load",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.model_warmup_seconds = Gauge(
            "model_warmup_seconds",
            "seconds the model took to warm up",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.caches = CacheCollector()
        registry.register(self.caches)
        if os.path.exists("/proc/self/stat"):
            ProcessCollector(registry=registry)
        else:
            # ProcessCollector reads /proc; elsewhere at least the resident memory.
            resident = Gauge(
                "process_resident_memory_bytes", "resident memory size in bytes", registry=registry
            )
            resident.set_function(lambda: float(resident_bytes()))

    def observe_transcription(
        self,
        rpc: str,
        audio_seconds: float,
        processing_seconds: float,
        real_time_factor: float,
        time_to_final_seconds: float | None = None,
    ) -> None:
        self.audio_seconds.labels(rpc).inc(audio_seconds)
        self.processing_seconds.labels(rpc).observe(processing_seconds)
        if audio_seconds > 0:
            self.real_time_factor.labels(rpc).observe(real_time_factor)
        if time_to_final_seconds is not None:
            self.time_to_final.observe(time_to_final_seconds)

    def observe_utterance(self, reason: str, end_of_speech_seconds: float | None) -> None:
        """An utterance closed; the latency only for one closed by a pause."""
        self.utterances.labels(reason).inc()
        if end_of_speech_seconds is not None:
            self.end_of_speech.observe(end_of_speech_seconds)

    def observe_batch(self, work: str, size: int, seconds: float) -> None:
        self.batch_size.labels(work).observe(size)
        self.step_seconds.labels(work).observe(seconds)

    def model_loaded(self, load_seconds: float, warmup_seconds: float) -> None:
        self.model_load_seconds.set(load_seconds)
        self.model_warmup_seconds.set(warmup_seconds)


class MetricsEndpoint:
    """The HTTP server answering Prometheus scrapes, on its own thread."""

    def __init__(self, metrics: ServerMetrics, address: str) -> None:
        host, port = split_address(address)
        self._httpd: WSGIServer
        try:
            self._httpd, self._thread = start_http_server(port, host, registry=metrics.registry)
        except OSError as error:
            raise OSError(f"cannot serve metrics on {address}: {error.strerror}") from None
        self.host = host
        self.port = int(self._httpd.server_port)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
