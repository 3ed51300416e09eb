"""Soak: concurrent unary and streaming load against one real server, then one table.

    python bench/soak.py [--minutes 5] [--size tiny|full] [--max-growth-mb 50]
                         [--unary 2] [--long 1] [--realtime-streams 2] [--fast-streams 1]

Client threads loop until the time is up: Transcribe (1-8 s of audio), TranscribeLong (40-70 s,
several chunks), streams paced like a live recording (100 ms messages, 3-8 s) and streams sent
as fast as possible (10-20 s). Every request carries different audio, and the server's caches
are off, so each one runs the model. The table gives requests served and errors by status per
RPC, p50/p99 latency (unary: the whole call; streams: half-close to final response, the
finalization latency), and the resident memory of the server process *and its children* (the
model worker, when it runs in one) after the warm-up and at the end, both sampled under load.

Exits 1 when memory grew more than --max-growth-mb from the end of the warm-up to the end, 2 when
a request failed or the server logged a traceback, 0 otherwise. Reads /proc: Linux only.
"""

from __future__ import annotations

import argparse
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
from parakeet_server.ops.proc import resident_bytes, tree_resident_bytes

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=50.0,
        help="exit 1 when server+children RSS grows more than this after the warm-up",
    )
    parser.add_argument("--warmup-seconds", type=float, default=30.0)
    parser.add_argument("--unary", type=int, default=2, help="Transcribe client threads")
    parser.add_argument("--long", type=int, default=1, help="TranscribeLong client threads")
    parser.add_argument("--realtime-streams", type=int, default=2)
    parser.add_argument("--fast-streams", type=int, default=1)
    args = parser.parse_args()
    if not Path("/proc/self/task").is_dir():
        print(
            "bench/soak.py reads process memory from /proc: it runs on Linux only", file=sys.stderr
        )
        return 2

    log = Path(tempfile.mkdtemp(prefix="parakeet-soak-")) / "server.log"
    process, port = start_server(
        checkpoint(args.size), log, "--audio-cache-bytes", "0", "--transcript-cache-bytes", "0"
    )
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ],
    )
    stub = pb_grpc.TranscriptionServiceStub(channel)
    results = Results()
    stop = threading.Event()
    kinds: list[tuple[str, Callable[[np.random.Generator], float]]] = [
        *[("Transcribe", lambda rng: transcribe(stub, rng))] * args.unary,
        *[("TranscribeLong", lambda rng: transcribe_long(stub, rng))] * args.long,
        *[("Stream real-time", lambda rng: stream(stub, rng, realtime=True))]
        * args.realtime_streams,
        *[("Stream fast", lambda rng: stream(stub, rng, realtime=False))] * args.fast_streams,
    ]

    def client(index: int, rpc: str, call: Callable[[np.random.Generator], float]) -> None:
        rng = np.random.default_rng(index)
        while not stop.is_set():
            results.record(rpc, lambda: call(rng))

    threads = [
        threading.Thread(target=client, args=(i, rpc, call), daemon=True)
        for i, (rpc, call) in enumerate(kinds)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, int]] = []
    try:
        time.sleep(args.warmup_seconds)
        with results.lock:  # latencies count from the end of the warm-up
            results.latencies.clear()
        start_rss = tree_resident_bytes(process.pid)
        server_start = resident_bytes(process.pid)
        end_at = time.monotonic() + args.minutes * 60
        while time.monotonic() < end_at and process.poll() is None:
            samples.append((time.monotonic() - began, tree_resident_bytes(process.pid)))
            time.sleep(min(5.0, max(0.0, end_at - time.monotonic())))
        end_rss = tree_resident_bytes(process.pid)
        server_end = resident_bytes(process.pid)
    finally:
        stop.set()
        for thread in threads:
            thread.join(600)
        channel.close()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(60)

    growth = (end_rss - start_rss) / 1e6
    print(
        f"soak: {args.minutes:g} min after a {args.warmup_seconds:g} s warm-up, {args.size} "
        f"model, {len(threads)} client threads, caches off"
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
    peak = max((rss for _, rss in samples), default=end_rss)
    print(
        f"RSS server+children: start {start_rss / 1e6:.1f} MB, end {end_rss / 1e6:.1f} MB, "
        f"growth {growth:+.1f} MB (bound {args.max_growth_mb:g} MB), peak {peak / 1e6:.1f} MB"
    )
    worker_start, worker_end = start_rss - server_start, end_rss - server_end
    print(
        f"  server process: {server_start / 1e6:.1f} -> {server_end / 1e6:.1f} MB; "
        f"model worker (children): {worker_start / 1e6:.1f} -> {worker_end / 1e6:.1f} MB"
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
