"""Transcribe latency and RTF of a real server over loopback gRPC, per audio length.

    python bench/unary.py [--size tiny|full] [--repeats 3] [--lengths 1.5 5 30 120]

Builds a random-weight checkpoint of the chosen size once (cached under
~/.cache/parakeet-server/bench/), starts `parakeet-server` on a free loopback port, and prints
one table: the median of --repeats runs per length, after one warm-up request.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import grpc
import numpy as np
from common import checkpoint, speechlike, start_server

from parakeet.v1 import transcription_pb2 as pb
from parakeet.v1 import transcription_pb2_grpc as pb_grpc


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
