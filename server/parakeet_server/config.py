"""Every server setting in one frozen dataclass, parsed once from flags and PARAKEET_* twins."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from parakeet_server import __version__
from parakeet_server.domain import DEFAULT_MODEL, DTYPES

MIB = 1024 * 1024


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port); ValueError with the reason otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:9464; port 0 for any)")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class ServerConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 50051
    max_message_bytes: int = 64 * MIB
    max_audio_seconds: float = 3600.0
    max_queued_requests: int = 32
    chunk_seconds: float = 30.0
    chunk_overlap_seconds: float = 5.0
    chunk_batch_size: int = 1
    max_streams: int = 8
    max_stream_seconds: float = 3600.0
    stream_idle_timeout_seconds: float = 30.0
    stream_block_ms: int = 1280
    stream_lookahead_ms: int = 640
    stream_left_context_seconds: float = 10.0
    auto_full_context_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0
    worker_max_requests: int = 0
    worker_max_memory_mb: int = 0
    max_batch_size: int = 8
    max_batch_wait_ms: float = 50.0
    audio_cache_bytes: int = 512 * MIB
    transcript_cache_bytes: int = 64 * MIB
    cache_dir: str = ""
    disk_cache_bytes: int = 2048 * MIB
    log_level: str = "info"
    log_format: str = "text"
    blas: str | None = None
    metrics_address: str = ""
    http_address: str = ""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    port_file: str | None = None
    memory_report_dir: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0-65535, not {self.port}")
        if self.max_message_bytes < 1024:
            problems.append("max message bytes must be at least 1024")
        if self.max_audio_seconds <= 0:
            problems.append("max audio seconds must be positive")
        if self.max_queued_requests < 1:
            problems.append("max queued requests must be at least 1")
        if self.chunk_seconds < 5:
            problems.append("chunk seconds must be at least 5")
        if not 0 <= self.chunk_overlap_seconds <= self.chunk_seconds / 2:
            problems.append("chunk overlap must be between 0 and half the chunk length")
        if not 1 <= self.chunk_batch_size <= 64:
            problems.append("chunk batch size must be 1 to 64")
        if self.max_streams < 1:
            problems.append("max streams must be at least 1")
        if self.max_stream_seconds <= 0 or self.stream_idle_timeout_seconds <= 0:
            problems.append("max stream seconds and the stream idle timeout must be positive")
        if self.stream_block_ms < 80 or self.stream_lookahead_ms < 0:
            problems.append("stream block must be at least 80 ms and look-ahead not negative")
        if self.stream_left_context_seconds < 0.08:
            problems.append("stream left context must be at least 0.08 s")
        if not 1 <= self.max_batch_size <= 64:
            problems.append("max batch size must be 1 to 64")
        if not 0 <= self.max_batch_wait_ms <= 1000:
            problems.append("max batch wait must be 0 to 1000 ms")
        if self.worker_max_requests < 0 or self.worker_max_memory_mb < 0:
            problems.append("worker recycling limits must not be negative (0: no limit)")
        if self.auto_full_context_seconds < 0:
            problems.append("auto full-context seconds must not be negative")
        if min(self.audio_cache_bytes, self.transcript_cache_bytes, self.disk_cache_bytes) < 0:
            problems.append("cache sizes must not be negative (0 turns a cache off)")
        if self.metrics_address:
            try:
                split_address(self.metrics_address)
            except ValueError as error:
                problems.append(f"metrics address: {error}")
        if self.http_address:
            try:
                split_address(self.http_address)
            except ValueError as error:
                problems.append(f"http address: {error}")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


# flag name -> (field, type, help). Each flag's environment twin is PARAKEET_<FIELD>.
_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--model", "model", str, "Hugging Face id or local directory of a Parakeet MLX model"),
    (
        "--dtype",
        "dtype",
        str,
        f"weight dtype, one of {', '.join(DTYPES)} (auto: float32 on CPU, bfloat16 on Apple GPUs)",
    ),
    ("--host", "host", str, "address to listen on (0.0.0.0 or :: for every interface)"),
    ("--port", "port", int, "port to listen on (0: any free port)"),
    (
        "--max-message-bytes",
        "max_message_bytes",
        int,
        "largest request accepted, in bytes; larger ones get RESOURCE_EXHAUSTED",
    ),
    (
        "--max-audio-seconds",
        "max_audio_seconds",
        float,
        "longest audio accepted per request; longer gets OUT_OF_RANGE",
    ),
    (
        "--max-queued-requests",
        "max_queued_requests",
        int,
        "requests waiting for or using the model at once; more get RESOURCE_EXHAUSTED",
    ),
    (
        "--chunk-seconds",
        "chunk_seconds",
        float,
        "audio longer than this is transcribed in overlapping chunks",
    ),
    (
        "--chunk-overlap-seconds",
        "chunk_overlap_seconds",
        float,
        "least overlap between consecutive chunks (words in it are joined, never doubled)",
    ),
    (
        "--chunk-batch-size",
        "chunk_batch_size",
        int,
        "chunks of one long recording run through the encoder together (see bench/transcribe.py)",
    ),
    ("--max-streams", "max_streams", int, "streams open at once; more get RESOURCE_EXHAUSTED"),
    (
        "--max-stream-seconds",
        "max_stream_seconds",
        float,
        "longest audio per stream; longer gets OUT_OF_RANGE",
    ),
    (
        "--stream-idle-timeout-seconds",
        "stream_idle_timeout_seconds",
        float,
        "a stream that sends nothing this long is ended with DEADLINE_EXCEEDED",
    ),
    (
        "--stream-block-ms",
        "stream_block_ms",
        int,
        "audio per streaming encoder step (rounded to 80 ms frames): the pace of partial results",
    ),
    (
        "--stream-lookahead-ms",
        "stream_lookahead_ms",
        int,
        "audio after a block the encoder sees before committing it: accuracy vs latency",
    ),
    (
        "--stream-left-context-seconds",
        "stream_left_context_seconds",
        float,
        "committed audio each streaming step attends to (bounds per-step cost and memory)",
    ),
    (
        "--auto-full-context-seconds",
        "auto_full_context_seconds",
        float,
        "in AUTO finalization, streams up to this long get a full-context final pass",
    ),
    (
        "--shutdown-grace-seconds",
        "shutdown_grace_seconds",
        float,
        "on SIGTERM/SIGINT, time in-flight requests get to finish",
    ),
    (
        "--audio-cache-bytes",
        "audio_cache_bytes",
        int,
        "memory for decoded audio, keyed by the request's bytes and format (0: off)",
    ),
    (
        "--transcript-cache-bytes",
        "transcript_cache_bytes",
        int,
        "memory for finished transcripts, keyed by audio, model and options (0: off)",
    ),
    (
        "--cache-dir",
        "cache_dir",
        str,
        "keep both caches on disk here too, across restarts: a path, or 'default' for "
        "$XDG_CACHE_HOME/parakeet-server (~/.cache/parakeet-server); empty: memory only",
    ),
    (
        "--disk-cache-bytes",
        "disk_cache_bytes",
        int,
        "most bytes the on-disk cache may hold (least recently used files go first)",
    ),
    (
        "--worker-max-requests",
        "worker_max_requests",
        int,
        "replace the model worker process after this many requests (0: never)",
    ),
    (
        "--worker-max-memory-mb",
        "worker_max_memory_mb",
        int,
        "replace the model worker process once its resident memory passes this (0: never)",
    ),
    (
        "--max-batch-size",
        "max_batch_size",
        int,
        "live streams whose next blocks run through the encoder together in one step",
    ),
    (
        "--max-batch-wait-ms",
        "max_batch_wait_ms",
        float,
        "how long a batch may wait, once the model is free, to fill: a streaming step for "
        "the other open streams' blocks, a short recording for requests already admitted "
        "(10 ms when none is) (0: run what is ready)",
    ),
    ("--log-level", "log_level", str, "debug, info, warning or error"),
    ("--log-format", "log_format", str, "text or json"),
    (
        "--blas",
        "blas",
        str,
        "Linux: path of a BLAS library for MLX, or 'bundled' (default: find OpenBLAS)",
    ),
    (
        "--metrics-address",
        "metrics_address",
        str,
        "HOST:PORT serving Prometheus metrics over HTTP, e.g. 127.0.0.1:9464 (empty: off; "
        "port 0: any free port, logged)",
    ),
    (
        "--http-address",
        "http_address",
        str,
        "HOST:PORT serving the OpenAI-style API over HTTP (POST /v1/audio/transcriptions, "
        "GET /v1/models), e.g. 127.0.0.1:8000; HTTPS with --tls-cert (empty: off; port 0: any "
        "free port, logged)",
    ),
    ("--tls-cert", "tls_cert", str, "PEM certificate chain: serve gRPC (and HTTP) over TLS"),
    ("--tls-key", "tls_key", str, "PEM private key of --tls-cert"),
    (
        "--tls-client-ca",
        "tls_client_ca",
        str,
        "PEM CA certificates: require client certificates signed by them (mutual TLS)",
    ),
    (
        "--auth-token-file",
        "auth_token_file",
        str,
        "file holding a bearer token every call must present (health and reflection stay "
        "open); or set the token itself in PARAKEET_AUTH_TOKEN",
    ),
    (
        "--port-file",
        "port_file",
        str,
        "write the port the server listens on to this file once it is bound (useful with "
        "--port 0); readiness is health's SERVING",
    ),
    (
        "--memory-report-dir",
        "memory_report_dir",
        str,
        "on SIGUSR1, write a report of what the server and its model worker hold here "
        "(memory-N.json, and a tracemalloc snapshot under PYTHONTRACEMALLOC); without it "
        "SIGUSR1 logs one line",
    ),
]


def _shown_default(value: object) -> str:
    """'; default X' for --help, nothing for the flags that are off unless given."""
    return "" if value in (None, "") else f"; default {value}"


def env_name(field_name: str) -> str:
    return f"PARAKEET_{field_name.upper()}"


def build_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="parakeet-server",
        description="gRPC speech-transcription server for NVIDIA Parakeet models on MLX. "
        "Every flag can also be set with the environment variable shown.",
    )
    for flag, name, _, help_text in _FLAGS:
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            help=f"{help_text} [env {env_name(name)}{_shown_default(getattr(defaults, name))}]",
            choices=_CHOICES.get(name),
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


_CHOICES: dict[str, Sequence[str]] = {
    "dtype": DTYPES,
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("text", "json"),
}


def parse_config(
    argv: Sequence[str] | None = None, environ: dict[str, str] | None = None
) -> ServerConfig:
    """Flags win over environment variables, which win over the defaults.

    Raises SystemExit (via argparse) with a usage message for any bad value.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ) if environ is None else environ
    converters = {name: convert for _, name, convert, _ in _FLAGS}
    values: dict[str, Any] = {}
    for field in fields(ServerConfig):
        raw = getattr(args, field.name, None)
        source = f"--{field.name.replace('_', '-')}"
        if raw is None and env_name(field.name) in environ:
            raw = environ[env_name(field.name)]
            source = env_name(field.name)
        if raw is None:
            continue
        if field.name in _CHOICES and raw not in _CHOICES[field.name]:
            parser.error(f"{source} must be one of {', '.join(_CHOICES[field.name])}, not {raw!r}")
        try:
            values[field.name] = converters[field.name](raw)
        except ValueError:
            parser.error(f"{source}: {raw!r} is not a valid value")
    try:
        return ServerConfig(**values)
    except ValueError as error:
        parser.error(str(error))
