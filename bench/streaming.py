"""Time-to-final of StreamingTranscribe at real-time pace against record-then-Transcribe.

    python bench/streaming.py [--size tiny|full] [--lengths 2 5 10 30 60] [--block-ms 1280]

For each utterance length, the audio is streamed at real-time pace (100 ms messages) in
FINALIZATION_MODE_STREAMING and FULL_CONTEXT; time-to-final is measured by the client from
its half-close to the final response. "sequential" is the roadmap's path: record everything,
then call Transcribe (its time-to-final is the whole Transcribe call). A second table runs the
streaming engine in-process over the longest length and prints the per-block processing time
at the start, middle and end of the stream: it must not grow.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from common import checkpoint, paced_requests, speechlike, start_server

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc

MESSAGE_SECONDS = 0.1


def stream_once(stub: pb_grpc.TranscriptionServiceStub, pcm: bytes, mode: int) -> tuple[float, int]:
    """Streams at real-time pace; returns (seconds from half-close to final, responses)."""
    started: list[float] = []
    closed: list[float] = []
    requests = paced_requests(pcm, mode, started, closed, MESSAGE_SECONDS)
    for count, response in enumerate(stub.StreamingTranscribe(requests, timeout=3600), 1):
        if response.is_final:
            return time.monotonic() - closed[0], count
    raise RuntimeError("the stream ended without a final response")


def in_process_blocks(model: Path, seconds: float, block_ms: int) -> list[float]:
    """Per-block processing times of the streaming engine over `seconds` of audio."""
    from parakeet_server.engine.runtime import use_fast_blas

    use_fast_blas()
    import mlx.core as mx

    from parakeet_server.domain import BlockSchedule
    from parakeet_server.engine.model import ParakeetEngine

    engine = ParakeetEngine.load(str(model))
    settings = BlockSchedule(block_frames=round(block_ms / 80))
    session = engine.open_stream(settings)
    pcm = np.frombuffer(speechlike_pcm(seconds), "<i2").astype(np.float32) / 32768
    times = []
    for offset in range(0, len(pcm), 1600):
        session.accept(pcm[offset : offset + 1600])
        while session.pending_blocks():
            started = time.perf_counter()
            session.step()
            times.append(time.perf_counter() - started)
    mx.clear_streams()
    return times


def speechlike_pcm(seconds: float) -> bytes:
    samples = np.frombuffer(speechlike(seconds, np.random.default_rng(0)), "<f4")
    return (samples * 32767).clip(-32768, 32767).astype("<i2").tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--lengths", type=float, nargs="+", default=[2, 5, 10, 30, 60])
    parser.add_argument("--block-ms", type=int, default=1280)
    args = parser.parse_args()

    model = checkpoint(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(
            model, Path(tmp) / "server.log", "--stream-block-ms", str(args.block_ms)
        )
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = pb_grpc.TranscriptionServiceStub(channel)
            print(
                f"model: {args.size}; block {args.block_ms} ms, look-ahead 640 ms; "
                "time-to-final after the half-close (streams paced at real time)"
            )
            print("| utterance | STREAMING | FULL_CONTEXT | sequential (record, then Transcribe) |")
            print("|---|---|---|---|")
            for seconds in args.lengths:
                pcm = speechlike_pcm(seconds)
                streaming, _ = stream_once(stub, pcm, pb.FINALIZATION_MODE_STREAMING)
                full, _ = stream_once(stub, pcm, pb.FINALIZATION_MODE_FULL_CONTEXT)
                request = pb.TranscribeRequest(
                    audio=pcm,
                    format=pb.AudioFormat(
                        encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000
                    ),
                )
                started = time.monotonic()
                stub.Transcribe(request, timeout=3600)
                sequential = time.monotonic() - started
                print(
                    f"| {seconds:g} s | {streaming:.3f} s | {full:.3f} s | {sequential:.3f} s |",
                    flush=True,
                )
            channel.close()
        finally:
            process.terminate()
            process.wait()

    longest = max(args.lengths)
    times = in_process_blocks(model, longest, args.block_ms)
    third = max(1, len(times) // 3)
    print()
    print(
        f"per-block processing time over {longest:g} s ({len(times)} blocks of {args.block_ms} ms)"
    )
    print("| first third (median) | middle third | last third | max | block RTF (median) |")
    print("|---|---|---|---|---|")
    first, middle, last = times[:third], times[third : 2 * third], times[2 * third :]
    median = statistics.median(times)
    print(
        f"| {statistics.median(first):.3f} s | {statistics.median(middle):.3f} s | "
        f"{statistics.median(last):.3f} s | {max(times):.3f} s | "
        f"{median / (args.block_ms / 1000):.2f} |"
    )


if __name__ == "__main__":
    main()
