"""Transcribe latency and RTF of a real server over loopback gRPC, per audio length.

    python bench/unary.py [--size tiny|full] [--repeats 3] [--lengths 1.5 5 30 120]

Builds a random-weight checkpoint of the chosen size once (cached under
~/.cache/parakeet-server/bench/), starts `parakeet-server` on a free loopback port, and prints
one table: the median of --repeats runs per length, after one warm-up request.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from parakeet.v1 import transcription_pb2 as pb
from parakeet.v1 import transcription_pb2_grpc as pb_grpc

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parakeet-server" / "bench"


def checkpoint(size: str) -> Path:
    path = CACHE / f"tdt-{size}"
    if not (path / "model.safetensors").exists():
        subprocess.run(
            [sys.executable, "-m", "parakeet_server.engine.checkpoint", str(path), "--size", size],
            check=True,
        )
    return path


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parakeet_server",
                "--model",
                str(model),
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--max-message-bytes",
                str(256 * 1024 * 1024),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    while True:
        match = re.search(r"SERVING address=\S+:(\d+)", log.read_text())
        if match:
            return process, int(match.group(1))
        if process.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.1)


def speechlike(seconds: float, rng: np.random.Generator) -> bytes:
    """Noise shaped by a syllable-rate envelope: cheap, deterministic, not silence."""
    n = int(seconds * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / 16000)
    return (rng.normal(0, 0.1, n) * envelope).astype("<f4").tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.5, 5.0, 30.0, 120.0])
    args = parser.parse_args()

    model = checkpoint(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(model, Path(tmp) / "server.log")
        try:
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30)]
            )
            stub = pb_grpc.TranscriptionServiceStub(channel)
            info = stub.GetServerInfo(pb.GetServerInfoRequest())
            print(
                f"model: {args.size} ({info.parameter_count:,} parameters), dtype {info.dtype}, "
                f"device {info.device}, blas {info.blas}; median of {args.repeats}"
            )
            print("| audio | server time | inference | RTF |")
            print("|---|---|---|---|")
            rng = np.random.default_rng(0)
            for seconds in args.lengths:
                request = pb.TranscribeRequest(
                    audio=speechlike(seconds, rng),
                    format=pb.AudioFormat(
                        encoding=pb.AudioFormat.ENCODING_FLOAT32, sample_rate_hertz=16000
                    ),
                )
                stub.Transcribe(request)
                runs = [stub.Transcribe(request).metrics for _ in range(args.repeats)]
                total = statistics.median(m.processing_seconds for m in runs)
                infer = statistics.median(m.inference_seconds for m in runs)
                print(f"| {seconds:g} s | {total:.3f} s | {infer:.3f} s | {total / seconds:.3f} |")
            channel.close()
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
