"""Whole-recording transcription, four ways, on the same audio, in one run so ratios are fair.

    python bench/transcribe.py [--size tiny|full] [--repeats 3] [--lengths 1.5 5 30 120 600]

1. floor: parakeet-mlx's `model.generate` on precomputed mel, in this process (for audio longer
   than a chunk: the server's chunks, one generate each) -- the physical limit on this machine;
2. server: `Transcribe` over loopback gRPC with the generated Python client, cold (new audio
   every run) and warm (the last audio again, named by its SHA-256 instead of uploaded: the
   transcript cache answers);
3. long audio through the server with chunk batching (--chunk-batch-size N) for lengths above
   one chunk;
4. before: one `parakeet-mlx` CLI process per file, loading the model each time, as the
   dictation app once did (run with this server's fast BLAS, so only the design differs).

Each figure is the median of --repeats runs after a warm-up (audio longer than one chunk:
--long-repeats runs, no warm-up). Prints one table and the verdict
on the roadmap's targets. Checkpoints have random weights (cached under
~/.cache/parakeet-server/bench/); speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf
from common import checkpoint, speechlike, start_server, wav

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.config import ServerConfig
from parakeet_server.engine.runtime import use_fast_blas

RATE = 16000


@dataclass
class Row:
    seconds: float
    path: str
    time: float
    floor: float | None = None

    def line(self) -> str:
        overhead = ""
        if self.floor is not None and self.path != "floor: generate on mel":
            extra = self.time - self.floor
            overhead = f"{extra * 1000:+.1f} ms ({extra / self.floor:+.1%})"
        return (
            f"| {self.seconds:g} s | {self.path} | {self.time:.4f} s | "
            f"{self.time / self.seconds:.4f} | {overhead} |"
        )


def recording(seconds: float, variant: int) -> np.ndarray:
    """Deterministic speech-like audio; each variant is different audio of the same length."""
    raw = speechlike(seconds, np.random.default_rng(1000 * variant + int(seconds * 10)))
    samples: np.ndarray = np.frombuffer(raw, "<f4")
    # Round-trip through 16-bit PCM, as every path reads the WAV file.
    return sf.read(io.BytesIO(wav(samples)), dtype="float32")[0]  # type: ignore[no-any-return]


def median_time(run: Callable[[], float], repeats: int, *, warm_up: bool = True) -> float:
    if warm_up:
        run()
    return statistics.median(run() for _ in range(repeats))


def repeats_for(seconds: float, repeats: int, long_repeats: int) -> tuple[int, bool]:
    """Runs, and whether to warm up first: long audio (several chunks, each a warm-up for the
    next) runs --long-repeats times without a warm-up of its own."""
    if seconds > ServerConfig().chunk_seconds:
        return long_repeats, False
    return repeats, True


def floor_times(
    model_path: Path, lengths: list[float], repeats: int, long_repeats: int
) -> dict[float, float]:
    import mlx.core as mx
    from parakeet_mlx.utils import from_pretrained

    from parakeet_server.engine.chunking import plan_chunks
    from parakeet_server.engine.features import log_mel

    config = ServerConfig()
    model = from_pretrained(str(model_path), dtype=mx.float32)
    mx.eval(model.parameters())
    times = {}
    for seconds in lengths:
        samples = recording(seconds, 0)
        chunks = plan_chunks(
            len(samples), int(config.chunk_seconds * RATE), int(config.chunk_overlap_seconds * RATE)
        )
        mels = [log_mel(samples[c.start : c.end], model.preprocessor_config) for c in chunks]
        mx.eval(mels)

        def run(mels: list[mx.array] = mels, model: object = model) -> float:
            started = time.perf_counter()
            for mel in mels:
                model.generate(mel)  # type: ignore[attr-defined]
            return time.perf_counter() - started

        count, warm_up = repeats_for(seconds, repeats, long_repeats)
        times[seconds] = median_time(run, count, warm_up=warm_up)
        del mels
        mx.clear_cache()
    del model
    mx.clear_cache()
    return times


def server_times(
    model: Path, log: Path, lengths: list[float], repeats: int, long_repeats: int, *flags: str
) -> dict[float, tuple[float, float, float, bool]]:
    """Per length: median cold time, median warm time (client side, then server side), and
    whether the warm runs hit the cache."""
    process, port = start_server(model, log, *flags)
    try:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30)]
        )
        stub = pb_grpc.TranscriptionServiceStub(channel)
        results = {}
        for seconds in lengths:
            results[seconds] = _cold_and_warm(stub, seconds, repeats, long_repeats)
        channel.close()
        return results
    finally:
        process.terminate()
        process.wait()


def _cold_and_warm(
    stub: pb_grpc.TranscriptionServiceStub, seconds: float, repeats: int, long_repeats: int
) -> tuple[float, float, float, bool]:
    variants = iter(range(1, 1000))
    last: list[pb.TranscribeRequest] = []

    def cold() -> float:
        request = pb.TranscribeRequest(audio=wav(recording(seconds, next(variants))))
        started = time.perf_counter()
        stub.Transcribe(request)
        elapsed = time.perf_counter() - started
        last[:] = [request]
        return elapsed

    hits: list[bool] = []
    server_side: list[float] = []

    def warm() -> float:
        # The last cold run's audio, in the cache now, named by its digest: no upload.
        request = pb.TranscribeRequest(audio_sha256=hashlib.sha256(last[0].audio).digest())
        started = time.perf_counter()
        response = stub.Transcribe(request)
        elapsed = time.perf_counter() - started
        hits.append(response.metrics.cache_hit)
        server_side.append(response.metrics.processing_seconds)
        return elapsed

    count, warm_up = repeats_for(seconds, repeats, long_repeats)
    cold_time = median_time(cold, count, warm_up=warm_up)
    warm_time = median_time(warm, repeats, warm_up=False)
    return cold_time, warm_time, statistics.median(server_side), all(hits)


def cli_time(model: Path, seconds: float, repeats: int, long_repeats: int, tmp: Path) -> float:
    """One parakeet-mlx CLI process per file, with this server's BLAS and chunking."""
    config = ServerConfig()
    script = (
        "import sys; from parakeet_server.engine.runtime import use_fast_blas; use_fast_blas(); "
        "from parakeet_mlx.cli import app; sys.argv[0] = 'parakeet-mlx'; app()"
    )
    variants = iter(range(1, 1000))

    def run() -> float:
        path = tmp / "clip.wav"
        path.write_bytes(wav(recording(seconds, next(variants))))
        started = time.perf_counter()
        subprocess.run(
            [
                *(sys.executable, "-c", script, str(path), "--model", str(model), "--fp32"),
                *("--chunk-duration", str(config.chunk_seconds)),
                *("--overlap-duration", str(config.chunk_overlap_seconds)),
                *("--output-format", "txt", "--output-dir", str(tmp)),
            ],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started

    count, warm_up = repeats_for(seconds, repeats, long_repeats)
    return median_time(run, count, warm_up=warm_up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--long-repeats", type=int, default=1, help="runs of audio longer than one chunk"
    )
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.5, 5, 30, 120, 600])
    parser.add_argument(
        "--batch-size", type=int, default=4, help="chunk batch size compared for long audio"
    )
    parser.add_argument(
        "--cli-max-seconds",
        type=float,
        default=120,
        help="skip the one-process-per-file path above this length (it only adds load time)",
    )
    args = parser.parse_args()
    blas = use_fast_blas()
    model = checkpoint(args.size)
    chunk = ServerConfig().chunk_seconds
    long_lengths = [s for s in args.lengths if s > chunk]

    floor = floor_times(model, args.lengths, args.repeats, args.long_repeats)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        served = server_times(
            model, tmp / "server.log", args.lengths, args.repeats, args.long_repeats
        )
        batched = (
            server_times(
                model,
                tmp / "batched.log",
                long_lengths,
                args.repeats,
                args.long_repeats,
                "--chunk-batch-size",
                str(args.batch_size),
            )
            if long_lengths
            else {}  # no length above one chunk: nothing to batch
        )
        cli = {
            s: cli_time(model, s, args.repeats, args.long_repeats, tmp)
            for s in args.lengths
            if s <= args.cli_max_seconds
        }

    print(
        f"model: {args.size} ({model.name}), float32, blas {blas.name}; "
        f"{platform.machine()} {platform.processor() or ''} {_cpus()}; "
        f"median of {args.repeats} ({args.long_repeats} above one chunk); chunks {chunk:g} s"
    )
    print("| audio | path | time | RTF | overhead vs floor |")
    print("|---|---|---|---|---|")
    for seconds in args.lengths:
        base = floor[seconds]
        cold, warm, warm_inside, hit = served[seconds]
        hit_note = "cache hit" if hit else "no hit"
        rows = [
            Row(seconds, "floor: generate on mel", base),
            Row(seconds, "server: Transcribe, cold", cold, base),
            Row(seconds, f"server: Transcribe, warm ({hit_note}), at the client", warm),
            Row(seconds, f"server: Transcribe, warm ({hit_note}), in the server", warm_inside),
        ]
        if seconds in batched:
            rows.append(
                Row(
                    seconds,
                    f"server: cold, chunk batch {args.batch_size}",
                    batched[seconds][0],
                    base,
                )
            )
        if seconds in cli:
            rows.append(Row(seconds, "before: parakeet-mlx CLI per file", cli[seconds], base))
        for row in rows:
            print(row.line())

    print()
    if 5 in floor:
        extra = served[5][0] - floor[5]
        ok = extra < max(0.05 * floor[5], 0.005)
        print(f"target server overhead at 5 s < max(5%, 5 ms): {extra * 1000:+.1f} ms -> {_ok(ok)}")
    worst_warm = max(warm for _, warm, _, _ in served.values())
    worst_inside = max(inside for _, _, inside, _ in served.values())
    print(
        f"target warm-cache hit < 5 ms at every length: worst {worst_warm * 1000:.1f} ms at the "
        f"client, {worst_inside * 1000:.1f} ms in the server -> {_ok(worst_warm < 0.005)}"
    )
    if long_lengths and 30 in served:
        rtf30 = served[30][0] / 30
        worst = max(min(served[s][0], batched[s][0]) / s for s in long_lengths)
        print(
            f"target long-audio RTF <= the 30 s clip's ({rtf30:.4f}): worst {worst:.4f} -> "
            f"{_ok(worst <= rtf30 * 1.05)}"
        )


def _ok(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _cpus() -> str:
    import os

    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
