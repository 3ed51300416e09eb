"""Many recordings at once: `parakeet-client transcribe FILE_OR_DIR... --jobs N`.

Each file goes through TranscribeLong on one shared channel (which may balance over several
servers); N run at a time. Refusals that pass (UNAVAILABLE, RESOURCE_EXHAUSTED: a server
restarting, draining or with a full queue) are retried with exponential back-off. A file whose
outputs all exist is skipped, and outputs are written whole or not at all, so an interrupted
run picks up where it stopped. The output names follow parakeet-mlx's `--output-template`.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from parakeet_client.formats import Cue, CueWord, render
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc

__all__ = [
    "AUDIO_SUFFIXES",
    "BatchResult",
    "BatchSettings",
    "balanced_target",
    "collect",
    "output_paths",
    "plan",
    "retryable",
    "run_batch",
]

# What a directory is searched for (files named on the command line are taken as they are).
AUDIO_SUFFIXES = frozenset(
    {
        *(".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac", ".webm"),
        *(".mka", ".mkv", ".aif", ".aiff", ".caf", ".wma"),
    }
)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class BatchSettings:
    formats: tuple[str, ...] = ("srt",)
    output_dir: Path | None = None  # None: next to each file
    template: str = "{filename}"
    jobs: int = 4
    retries: int = 5
    timeout: float = 600.0
    metadata: tuple[tuple[str, str], ...] = ()
    audio_format: pb.AudioFormat = field(default_factory=pb.AudioFormat)
    beam: int = 0
    phrases: tuple[pb.Phrase, ...] = ()  # --phrase, --phrases-file


@dataclass
class BatchResult:
    files: int = 0
    transcribed: int = 0
    skipped: int = 0
    retries: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.files} files: {self.transcribed} transcribed, {self.skipped} skipped "
            f"(output exists), {len(self.failures)} failed; "
            f"{self.audio_seconds / 3600:.3f} h audio in {self.wall_seconds:.1f} s wall time"
            + (
                f" ({self.audio_seconds / self.wall_seconds:.0f}x real time)"
                if self.wall_seconds > 0 and self.audio_seconds > 0
                else ""
            )
            + (f"; {self.retries} retries" if self.retries else "")
        ]
        lines += [f"failed: {path}: {reason}" for path, reason in self.failures]
        return "\n".join(lines)


def collect(arguments: Sequence[str]) -> list[Path]:
    """Files as named, directories searched (recursively) for audio; sorted, without repeats.

    Raises OSError for a name that does not exist."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in AUDIO_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found.append(path)
        else:
            raise OSError(f"{argument}: no such file or directory")
    return list(dict.fromkeys(found))


def output_paths(audio: Path, index: int, settings: BatchSettings) -> dict[str, Path]:
    """parakeet-mlx's template fields: {filename} (no suffix), {parent}, {date} (YYYYMMDD),
    {index} (from 1). A relative name goes into --output-dir, or else beside the audio."""
    base = settings.template.format(
        filename=audio.stem,
        parent=str(audio.parent),
        date=datetime.date.today().strftime("%Y%m%d"),
        index=str(index),
    )
    folder = settings.output_dir if settings.output_dir is not None else audio.parent
    return {fmt: folder / f"{base}.{fmt}" for fmt in settings.formats}


def plan(files: Sequence[Path], settings: BatchSettings) -> list[dict[str, Path]]:
    """Each file's outputs; ValueError when two files would write the same output."""
    planned = [output_paths(audio, index, settings) for index, audio in enumerate(files, start=1)]
    owners: dict[Path, Path] = {}
    for audio, outputs in zip(files, planned, strict=True):
        for path in outputs.values():
            if path in owners:
                raise ValueError(
                    f"{owners[path]} and {audio} would both write {path}; tell them apart "
                    "with --output-template (e.g. '{filename}_{index}' or '{parent}/{filename}')"
                )
            owners[path] = audio
    return planned


def retryable(error: grpc.RpcError) -> bool:
    """Worth another try later: the server was unreachable, restarting, draining or full. A
    request over the message limit is RESOURCE_EXHAUSTED too, and would only fail again."""
    if error.code() not in _RETRYABLE:
        return False
    details = error.details() or ""
    return "--max-message-bytes" not in details and "larger than max" not in details


def balanced_target(servers: str) -> str:
    """`host1:port,host2:port` as one gRPC target (`ipv4:a:p,b:p`), names resolved here; a
    single server or a `dns:///name:port` target is returned as it is.

    Raises OSError when a name does not resolve, ValueError for a malformed list."""
    if "," not in servers:
        return servers
    families: set[int] = set()
    addresses: list[str] = []
    for item in (part.strip() for part in servers.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"--server: {item!r} is not HOST:PORT")
        host = host.removeprefix("[").removesuffix("]")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise OSError(f"--server: cannot resolve {host}: {error.strerror}") from None
        family, _, _, _, sockaddr = infos[0]
        families.add(family)
        ip = str(sockaddr[0])
        addresses.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ValueError("--server: list servers of one address family (all IPv4 or all IPv6)")
    scheme = "ipv6" if families == {socket.AF_INET6} else "ipv4"
    return f"{scheme}:" + ",".join(addresses)


class _Progress:
    """One bar over every file: finished files, plus the share done of those in flight."""

    def __init__(self, out: TextIO | None, total: int, width: int = 30) -> None:
        self._out = out
        self._total = max(1, total)
        self._width = width
        self._lock = threading.Lock()
        self._finished = 0
        self._failed = 0
        self._audio = 0.0
        self._running: dict[Path, float] = {}
        self._drawn = 0.0

    def update(self, path: Path, fraction: float) -> None:
        with self._lock:
            self._running[path] = fraction
            self._draw()

    def finish(self, path: Path, audio_seconds: float, failed: bool = False) -> None:
        with self._lock:
            self._running.pop(path, None)
            self._finished += 1
            self._failed += failed
            self._audio += audio_seconds
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._out is None or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        fraction = min(1.0, (self._finished + sum(self._running.values())) / self._total)
        filled = round(fraction * self._width)
        self._out.write(
            f"\r[{'#' * filled}{'.' * (self._width - filled)}] {fraction:4.0%} "
            f"{self._finished}/{self._total} files  {self._audio / 3600:.2f} h audio"
            + (f"  {self._failed} failed" if self._failed else "")
        )
        self._out.flush()

    def close(self) -> None:
        if self._out is not None and self._drawn:
            self._out.write("\n")
            self._out.flush()


def _cues(transcript: pb.Transcript) -> list[Cue]:
    def seconds(duration: object) -> float:
        return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]

    return [
        Cue(
            text=s.text,
            start=seconds(s.start_time),
            end=seconds(s.end_time),
            confidence=s.confidence,
            words=tuple(
                CueWord(w.text, seconds(w.start_time), seconds(w.end_time), w.confidence)
                for w in s.words
            ),
        )
        for s in transcript.segments
    ]


def _write_whole(path: Path, text: str) -> None:
    """Written to a temporary name and renamed: a file that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


class _Job:
    def __init__(
        self,
        stub: pb_grpc.TranscriptionServiceStub,
        settings: BatchSettings,
        progress: _Progress,
        result: BatchResult,
        lock: threading.Lock,
        sleep: Callable[[float], object],
    ) -> None:
        self._stub = stub
        self._settings = settings
        self._progress = progress
        self._result = result
        self._lock = lock
        self._sleep = sleep

    def __call__(self, audio: Path, outputs: dict[str, Path]) -> None:
        seconds = 0.0
        ok = False
        try:
            final = self._transcribe(audio, audio.read_bytes())
            seconds = final.metrics.audio_seconds
            cues = _cues(final.transcript)
            for fmt, path in outputs.items():
                _write_whole(path, render(fmt, final.transcript.text, cues))
        except grpc.RpcError as error:
            self._failed(audio, f"{error.code().name}: {error.details()}")
        except OSError as error:
            self._failed(audio, f"{error.strerror or error}")
        else:
            ok = True
            with self._lock:
                self._result.transcribed += 1
                self._result.audio_seconds += seconds
        finally:
            self._progress.finish(audio, seconds, failed=not ok)

    def _failed(self, audio: Path, reason: str) -> None:
        with self._lock:
            self._result.failures.append((audio, reason))

    def _transcribe(self, audio: Path, data: bytes) -> pb.TranscribeLongResponse:
        settings = self._settings
        request = pb.TranscribeLongRequest(
            audio=data,
            format=settings.audio_format,
            options=pb.TranscriptionOptions(
                word_timestamps="json" in settings.formats,
                decoding_method=pb.DECODING_METHOD_BEAM
                if settings.beam
                else pb.DECODING_METHOD_GREEDY,
                beam_size=settings.beam,
                phrases=settings.phrases,
            ),
        )
        attempt = 0
        while True:
            try:
                final: pb.TranscribeLongResponse | None = None
                update: pb.TranscribeLongResponse
                for update in self._stub.TranscribeLong(
                    request, timeout=settings.timeout, metadata=settings.metadata
                ):
                    if update.audio_total_seconds > 0:
                        self._progress.update(
                            audio, update.audio_processed_seconds / update.audio_total_seconds
                        )
                    if update.is_final:
                        final = update
                if final is None:
                    raise OSError("the server ended the call without a final result")
                return final
            except grpc.RpcError as error:
                if attempt >= settings.retries or not retryable(error):
                    raise
                delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)
                attempt += 1
                with self._lock:
                    self._result.retries += 1
                self._progress.update(audio, 0.0)
                self._sleep(delay * random.uniform(0.5, 1.5))


def run_batch(
    stub: pb_grpc.TranscriptionServiceStub,
    files: Sequence[Path],
    settings: BatchSettings,
    progress_out: TextIO | None,
    *,
    sleep: Callable[[float], object] = time.sleep,
) -> BatchResult:
    """Transcribes `files`, `settings.jobs` at a time; never raises for one file's failure."""
    started = time.perf_counter()
    result = BatchResult(files=len(files))
    progress = _Progress(progress_out, len(files))
    lock = threading.Lock()
    job = _Job(stub, settings, progress, result, lock, sleep)
    with ThreadPoolExecutor(max_workers=max(1, settings.jobs)) as pool:
        for audio, outputs in zip(files, plan(files, settings), strict=True):
            if all(path.exists() for path in outputs.values()):
                result.skipped += 1
                progress.finish(audio, 0.0)
                continue
            pool.submit(job, audio, outputs)
    progress.close()
    result.wall_seconds = time.perf_counter() - started
    return result
