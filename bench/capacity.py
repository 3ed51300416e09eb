"""How many live dictation streams one server holds, and one-shot throughput under concurrency.

    python bench/capacity.py [--size tiny|full] [--streams 1 2 3 4] [--seconds 20]
                             [--config NAME=FLAGS ...]
    python bench/capacity.py --steps [--size tiny|full] [--streams 1 2 3 4]

For each N, N streams of `--seconds` of speech-like audio are paced in real time (100 ms
messages, FINALIZATION_MODE_STREAMING), started `--stagger` seconds apart. Per N the table gives
the worst lag of a partial behind the audio (the time a partial arrived minus the time the audio
it covers had been spoken) and the time from half-close to the final response (median and
worst over the streams). Then 8 clients send a 5 s clip each at once, against the same 8 sent
one after another: the throughput ratio.

`--steps` measures the streaming step itself, in process: N sessions fed 16 s of audio each,
stepped one by one and as one batch (`step_streams`), median seconds of the steady-state steps.

Each `--config NAME=FLAGS` runs the whole table against its own server, side by side in one
run; the default compares one stream per step with the stock encoder ("before") against
batched steps with the fast encoder ("after"). FLAGS may start with ENV=VALUE words, which go
to the server's environment. Timings here vary +-20% run to run: compare configs of one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from common import checkpoint, paced_requests, speechlike, start_server, wav

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc

MESSAGE_SECONDS = 0.1
DEFAULT_CONFIGS = [
    "before=PARAKEET_ENCODER=stock --max-batch-size 1",
    "after=--max-batch-size 8",
]


@dataclass
class StreamFigures:
    worst_lag: float
    time_to_final: float
    text: str


def pcm16(seconds: float, seed: int) -> bytes:
    samples = np.frombuffer(speechlike(seconds, np.random.default_rng(seed)), "<f4")
    return (samples * 32767).clip(-32768, 32767).astype("<i2").tobytes()


def paced_stream(stub: pb_grpc.TranscriptionServiceStub, pcm: bytes) -> StreamFigures:
    started: list[float] = []
    closed: list[float] = []
    requests = paced_requests(pcm, pb.FINALIZATION_MODE_STREAMING, started, closed, MESSAGE_SECONDS)
    worst = 0.0
    for response in stub.StreamingTranscribe(requests, timeout=3600):
        now = time.monotonic()
        if response.is_final:
            return StreamFigures(worst, now - closed[0], response.finalized_text)
        worst = max(worst, now - (started[0] + response.audio_processed_seconds))
    raise RuntimeError("the stream ended without a final response")


def streams_at_once(
    stub: pb_grpc.TranscriptionServiceStub, count: int, seconds: float, stagger: float
) -> list[StreamFigures]:
    def one(index: int) -> StreamFigures:
        time.sleep(index * stagger)
        return paced_stream(stub, pcm16(seconds, index))

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def one_shot_throughput(
    stub: pb_grpc.TranscriptionServiceStub, clients: int
) -> tuple[float, float]:
    """Wall seconds for `clients` 5 s clips sent at once, and sent one after another."""
    clips = [
        wav(np.frombuffer(speechlike(5.0, np.random.default_rng(100 + i)), "<f4"))
        for i in range(clients)
    ]

    def call(audio: bytes) -> None:
        stub.Transcribe(pb.TranscribeRequest(audio=audio), timeout=3600)

    started = time.monotonic()
    for clip in clips:
        call(clip)
    sequential = time.monotonic() - started
    barrier = threading.Barrier(clients)

    def together(clip: bytes) -> None:
        barrier.wait()
        call(clip)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(together, clips))
    return time.monotonic() - started, sequential


def run_config(
    name: str, flags: list[str], model: Path, args: argparse.Namespace, tmp: Path
) -> list[str]:
    env = dict(word.split("=", 1) for word in flags if "=" in word and not word.startswith("-"))
    flags = [word for word in flags if not ("=" in word and not word.startswith("-"))]
    process, port = start_server(
        model,
        tmp / f"{name}.log",
        "--audio-cache-bytes",
        "0",
        "--transcript-cache-bytes",
        "0",
        "--max-streams",
        str(max(args.streams) + 1),
        *flags,
        env=env,
    )
    rows = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TranscriptionServiceStub(channel)
            paced_stream(stub, pcm16(min(3.0, args.seconds), 99))  # first-use costs out of the way
            for count in args.streams:
                figures = streams_at_once(stub, count, args.seconds, args.stagger)
                finals = [f.time_to_final for f in figures]
                info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
                rows.append(
                    f"| {name} | {count} | {max(f.worst_lag for f in figures):.1f} s | "
                    f"{statistics.median(finals):.1f} / {max(finals):.1f} s | "
                    f"{info.last_batch_size} |"
                )
            together, sequential = one_shot_throughput(stub, args.clients)
            rows.append(
                f"| {name} | one-shot: {args.clients} x 5 s at once {together:.1f} s, "
                f"one after another {sequential:.1f} s | throughput x{sequential / together:.2f} "
                "| | |"
            )
    finally:
        process.terminate()
        process.wait()
    return rows


def step_times(size: str, counts: list[int]) -> None:
    from parakeet_server.engine.runtime import use_fast_blas

    use_fast_blas()
    import mlx.core as mx

    from parakeet_server.domain import BlockSchedule
    from parakeet_server.engine import streaming
    from parakeet_server.engine.model import ParakeetEngine

    engine = ParakeetEngine.load(str(checkpoint(size)))
    schedule = BlockSchedule(block_frames=16, lookahead_frames=8, left_context_frames=125)

    def median_step(count: int, batched: bool) -> float:
        sessions = [engine.open_stream(schedule) for _ in range(count)]
        for index, session in enumerate(sessions):
            session.accept(np.frombuffer(speechlike(16.0, np.random.default_rng(index)), "<f4"))
        times = []
        while all(session.pending_blocks() for session in sessions):
            started = time.perf_counter()
            if batched:
                streaming.step_streams(sessions)
            else:
                for session in sessions:
                    session.step()
            times.append(time.perf_counter() - started)
        return statistics.median(times[2:])  # once the left context has filled

    print(f"model: {size}; streaming step (1.28 s block, 0.64 s look-ahead, 10 s left context)")
    print("| streams | one by one | batched |")
    print("|---|---|---|")
    for count in counts:
        alone = median_step(count, batched=False)
        together = f"{median_step(count, batched=True):.2f} s" if count > 1 else "-"
        print(f"| {count} | {alone:.2f} s | {together} |", flush=True)
    mx.clear_streams()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stagger", type=float, default=0.37, help="seconds between starts")
    parser.add_argument("--clients", type=int, default=8, help="one-shot clients at once")
    parser.add_argument(
        "--config",
        action="append",
        metavar="NAME=FLAGS",
        help=f"a server configuration to measure (default: {' and '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument("--steps", action="store_true", help="time streaming steps in process")
    args = parser.parse_args()
    if args.steps:
        step_times(args.size, args.streams)
        return
    configs = args.config or DEFAULT_CONFIGS
    model = checkpoint(args.size)
    print(
        f"model: {args.size}; {args.seconds:g} s streams paced in real time (100 ms messages, "
        f"STREAMING), started {args.stagger:g} s apart"
    )
    print(
        "| config | streams | worst partial lag | final after half-close (median / worst) "
        "| last batch |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            name, _, flags = config.partition("=")
            for row in run_config(name, flags.split(), model, args, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
