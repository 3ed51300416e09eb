"""Soak: concurrent unary and streaming load against one real server, in phases, with a
memory verdict taken where nothing is in flight.

    python bench/soak.py [--minutes 5] [--size tiny|full] [--phase-seconds 120]
                         [--max-growth-mb 50] [--unary 2] [--long 1] [--realtime-streams 2]
                         [--fast-streams 1] [--think-seconds 0] [--tracemalloc 10]

Client threads loop: Transcribe (1-8 s of audio), TranscribeLong (40-70 s, several chunks),
streams paced like a live recording (100 ms messages, 3-8 s) and streams sent as fast as possible
(10-20 s), each thread pausing --think-seconds between its requests. Every request carries
different audio, and the server's caches are off, so each one runs the model.

The load runs in phases of --phase-seconds. After the warm-up and after each phase the soak
*quiesces*: the clients finish the request they are in and wait, the server's streams and queue
drain, and the server writes a memory report (SIGUSR1, `--memory-report-dir`): its resident
memory, C heap and Python objects (and tracemalloc's view when --tracemalloc > 0), and what the
model worker holds (resident, MLX arrays/cache/peak, C heap). Resident memory under load moves
with what is in flight, so growth is judged only on these quiescent points: the last against the
first. Between them, resident memory is sampled every 5 s (min/max per phase). The tables: per
RPC, requests served, errors by status and p50/p99 latency (unary: the whole call; streams:
half-close to final response); per quiescent point, what each side holds; where memory went
from the first to the last point, with the Python allocation sites that grew most.

Exits 1 when memory (server + worker, resident) grew more than --max-growth-mb from the first
quiescent point to the last, 2 when a request failed or the server logged a traceback, 0
otherwise. Reads /proc and sends signals: Linux only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from common import checkpoint, speechlike, start_server

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.ops.proc import tree_resident_bytes
from parakeet_server.testing.memory import (
    MemoryProbe,
    MemoryReport,
    describe_site,
    grown_sites,
    wait_quiet,
)

FLOAT32 = pb.AudioFormat.ENCODING_FLOAT32
MESSAGE_SECONDS = 0.1


@dataclass
class Results:
    """Outcomes per RPC, shared by the client threads."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    messages: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rpc: str, call: Callable[[], float]) -> None:
        try:
            seconds = call()
        except grpc.RpcError as error:
            with self.lock:
                self.errors[rpc][error.code().name] += 1
                self.messages[f"{rpc} {error.code().name}: {error.details()}"] += 1
            return
        with self.lock:
            self.latencies[rpc].append(seconds)


def _pcm(rng: np.random.Generator, low: float, high: float) -> bytes:
    return speechlike(float(rng.uniform(low, high)), rng)


def transcribe(stub: pb_grpc.TranscriptionServiceStub, rng: np.random.Generator) -> float:
    request = pb.TranscribeRequest(
        audio=_pcm(rng, 1, 8), format=pb.AudioFormat(encoding=FLOAT32, sample_rate_hertz=16000)
    )
    started = time.perf_counter()
    stub.Transcribe(request, timeout=300)
    return time.perf_counter() - started


def transcribe_long(stub: pb_grpc.TranscriptionServiceStub, rng: np.random.Generator) -> float:
    request = pb.TranscribeLongRequest(
        audio=_pcm(rng, 40, 70), format=pb.AudioFormat(encoding=FLOAT32, sample_rate_hertz=16000)
    )
    started = time.perf_counter()
    responses = list(stub.TranscribeLong(request, timeout=600))
    if not responses[-1].is_final:
        raise RuntimeError("TranscribeLong ended without a final response")
    return time.perf_counter() - started


def stream(
    stub: pb_grpc.TranscriptionServiceStub, rng: np.random.Generator, *, realtime: bool
) -> float:
    """One stream; returns the seconds from its half-close to the final response."""
    pcm = _pcm(rng, 3, 8) if realtime else _pcm(rng, 10, 20)
    per_message = int(16000 * MESSAGE_SECONDS) * 4
    closed: list[float] = []

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(
            config=pb.StreamingConfig(
                format=pb.AudioFormat(encoding=FLOAT32, sample_rate_hertz=16000),
                interim_results=True,
                finalization_mode=pb.FINALIZATION_MODE_STREAMING,
            )
        )
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), per_message)):
            if realtime:
                delay = start + (index + 1) * MESSAGE_SECONDS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield pb.StreamingTranscribeRequest(audio=pcm[offset : offset + per_message])
        closed.append(time.monotonic())

    for response in stub.StreamingTranscribe(requests(), timeout=600):
        if response.is_final:
            return time.monotonic() - closed[0]
    raise RuntimeError("the stream ended without a final response")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Load:
    """The client threads, which can be paused at a request boundary (quiesced)."""

    def __init__(
        self,
        kinds: list[tuple[str, Callable[[np.random.Generator], float]]],
        results: Results,
        think_seconds: float,
    ) -> None:
        self.kinds = kinds
        self._results = results
        self._think = think_seconds
        self._stop = threading.Event()
        self._running = threading.Event()
        self._idle = threading.Semaphore(0)
        self._threads = [
            threading.Thread(target=self._client, args=(i, rpc, call), daemon=True)
            for i, (rpc, call) in enumerate(kinds)
        ]

    def start(self) -> None:
        self._running.set()
        for thread in self._threads:
            thread.start()

    def pause(self, timeout: float = 900.0) -> None:
        """Returns once every client thread has finished its request and waits."""
        self._running.clear()
        for _ in self._threads:
            if not self._idle.acquire(timeout=timeout):
                raise TimeoutError(f"a client request did not finish within {timeout:g} s")

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(900)

    def _client(self, index: int, rpc: str, call: Callable[[np.random.Generator], float]) -> None:
        rng = np.random.default_rng(index)
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.release()
                self._running.wait()
                continue
            self._results.record(rpc, lambda: call(rng))
            if self._think:
                self._stop.wait(self._think * float(rng.uniform(0.5, 1.5)))


@dataclass
class Point:
    """A quiescent point: minutes since the end of the warm-up, and the server's report."""

    minute: float
    report: MemoryReport
    tree_resident: int  # server + children, read from /proc at the same moment


def quiesce(
    load: Load, stub: pb_grpc.TranscriptionServiceStub, probe: MemoryProbe, pid: int
) -> tuple[MemoryReport, int]:
    """Pauses the load, waits for the server to drain, takes a report; resumes nothing."""
    load.pause()
    wait_quiet(stub)
    return probe.report(), tree_resident_bytes(pid)


MB = 1e6
COLUMNS: list[tuple[str, str, str]] = [
    ("server rss", "server", "resident"),
    ("server heap", "server", "heap_in_use"),
    ("heap free", "server", "heap_free"),
    ("py traced", "server", "python_traced"),
    ("worker rss", "worker", "resident"),
    ("mlx active", "worker", "mlx_active"),
    ("mlx cache", "worker", "mlx_cache"),
    ("mlx peak", "worker", "mlx_peak"),
    ("worker heap", "worker", "heap_in_use"),
    ("heap free", "worker", "heap_free"),
]


def _value(report: MemoryReport, side: str, key: str) -> float | None:
    figures = report.server if side == "server" else report.worker
    value = figures.get(key)
    return None if value is None else float(value)


def print_points(points: list[Point]) -> None:
    names = ["min", *(name for name, _, _ in COLUMNS), "py objects"]
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    for point in points:
        cells = [f"{point.minute:.1f}"]
        for _, side, key in COLUMNS:
            value = _value(point.report, side, key)
            cells.append("-" if value is None else f"{value / MB:.1f}")
        cells.append(str(point.report.server["python_objects"]))
        print("| " + " | ".join(cells) + " |")
    if len(points) < 2:
        return
    first, last = points[0], points[-1]
    went = []
    for _, side, key in COLUMNS:
        a, b = _value(first.report, side, key), _value(last.report, side, key)
        if a is not None and b is not None:
            went.append(f"{side}.{key} {(b - a) / MB:+.1f}")
    objects = last.report.server["python_objects"] - first.report.server["python_objects"]
    print("from the first quiescent point to the last (MB): " + ", ".join(went))
    print(f"  python objects {objects:+d}; types that grew most:")
    before = dict(first.report.server["python_top_types"])
    grown = sorted(
        (
            (count - before.get(name, 0), name)
            for name, count in last.report.server["python_top_types"]
        ),
        reverse=True,
    )
    print(
        "   " + ", ".join(f"{name} {delta:+d}" for delta, name in grown[:6] if delta > 0)
        or "   none"
    )
    sites = grown_sites(first.report, last.report)
    if sites:
        print("  Python allocation sites that grew most (tracemalloc):")
        for diff in sites:
            print(f"    {describe_site(diff)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=50.0,
        help="exit 1 when server+worker RSS at the last quiescent point exceeds the first by this",
    )
    parser.add_argument("--warmup-seconds", type=float, default=30.0)
    parser.add_argument("--phase-seconds", type=float, default=120.0, help="load between points")
    parser.add_argument("--unary", type=int, default=2, help="Transcribe client threads")
    parser.add_argument("--long", type=int, default=1, help="TranscribeLong client threads")
    parser.add_argument("--realtime-streams", type=int, default=2)
    parser.add_argument("--fast-streams", type=int, default=1)
    parser.add_argument(
        "--think-seconds", type=float, default=0.0, help="mean pause between a thread's requests"
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=10,
        metavar="FRAMES",
        help="run the server under tracemalloc with this many frames (0: off)",
    )
    args = parser.parse_args()
    if not Path("/proc/self/task").is_dir():
        print("bench/soak.py reads /proc and signals the server: Linux only", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="parakeet-soak-"))
    log = work / "server.log"
    env = dict(os.environ)
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)
    reports = work / "memory"
    process, port = start_server(
        checkpoint(args.size),
        log,
        "--audio-cache-bytes",
        "0",
        "--transcript-cache-bytes",
        "0",
        "--memory-report-dir",
        str(reports),
        env=env,
    )
    probe = MemoryProbe(process.pid, reports)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ],
    )
    stub = pb_grpc.TranscriptionServiceStub(channel)
    results = Results()
    kinds: list[tuple[str, Callable[[np.random.Generator], float]]] = [
        *[("Transcribe", lambda rng: transcribe(stub, rng))] * args.unary,
        *[("TranscribeLong", lambda rng: transcribe_long(stub, rng))] * args.long,
        *[("Stream real-time", lambda rng: stream(stub, rng, realtime=True))]
        * args.realtime_streams,
        *[("Stream fast", lambda rng: stream(stub, rng, realtime=False))] * args.fast_streams,
    ]
    load = Load(kinds, results, args.think_seconds)
    points: list[Point] = []
    phases: list[tuple[float, int, int]] = []  # (end minute, min RSS, max RSS) under load
    try:
        load.start()
        time.sleep(args.warmup_seconds)
        report, tree = quiesce(load, stub, probe, process.pid)
        with results.lock:  # latencies count from the end of the warm-up
            results.latencies.clear()
        began = time.monotonic()
        points.append(Point(0.0, report, tree))
        end_at = began + args.minutes * 60
        while time.monotonic() < end_at and process.poll() is None:
            load.resume()
            phase_end = min(end_at, time.monotonic() + args.phase_seconds)
            samples = []
            while time.monotonic() < phase_end and process.poll() is None:
                samples.append(tree_resident_bytes(process.pid))
                time.sleep(min(5.0, max(0.0, phase_end - time.monotonic())))
            report, tree = quiesce(load, stub, probe, process.pid)
            minute = (time.monotonic() - began) / 60
            points.append(Point(minute, report, tree))
            if samples:
                phases.append((minute, min(samples), max(samples)))
    finally:
        load.stop()
        channel.close()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(120)

    print(
        f"soak: {args.minutes:g} min in phases of {args.phase_seconds:g} s after a "
        f"{args.warmup_seconds:g} s warm-up, {args.size} model, {len(kinds)} client threads "
        f"(think {args.think_seconds:g} s), caches off, tracemalloc {args.tracemalloc} frames"
    )
    print(f"{'rpc':<18} {'served':>7} {'errors':>7} {'p50':>9} {'p99':>9}  latency")
    for rpc in dict.fromkeys(rpc for rpc, _ in kinds):
        done = results.latencies[rpc]
        failed = sum(results.errors[rpc].values())
        what = "half-close to final" if rpc.startswith("Stream") else "whole call"
        print(
            f"{rpc:<18} {len(done):>7} {failed:>7} {_percentile(done, 50):>8.3f}s "
            f"{_percentile(done, 99):>8.3f}s  {what}"
        )
    by_status: Counter[str] = Counter()
    for counts in results.errors.values():
        by_status.update(counts)
    print("errors by status:", ", ".join(f"{k}={v}" for k, v in by_status.items()) or "none")
    for message, count in results.messages.most_common(5):
        print(f"  {count}x {message}")
    print("\nresident memory under load, server + worker (MB), per phase: min / max")
    print(
        "   " + "; ".join(f"to {m:.1f} min {lo / MB:.0f} / {hi / MB:.0f}" for m, lo, hi in phases)
    )
    print("\nat the quiescent points (MB; min = minutes after the warm-up):")
    print_points(points)
    growth = (points[-1].tree_resident - points[0].tree_resident) / MB if points else 0.0
    print(
        f"verdict: server + worker resident at quiescent points {points[0].tree_resident / MB:.1f}"
        f" -> {points[-1].tree_resident / MB:.1f} MB, growth {growth:+.1f} MB "
        f"(bound {args.max_growth_mb:g} MB) over {len(points)} points"
    )
    tracebacks = log.read_text(errors="replace").count("Traceback")
    print(f"server exit code {exit_code}, tracebacks in log {tracebacks}, log {log}")
    if growth > args.max_growth_mb:
        print(f"FAIL: memory grew {growth:.1f} MB > {args.max_growth_mb:g} MB", file=sys.stderr)
        return 1
    if by_status or tracebacks or exit_code != 0:
        print("FAIL: requests failed or the server crashed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
