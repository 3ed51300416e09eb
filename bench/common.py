"""Shared pieces of the benchmarks: cached random checkpoints, a server on a free port, audio."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing import launcher

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parakeet-server" / "bench"


def checkpoint(size: str) -> Path:
    path = CACHE / f"tdt-{size}"
    if not (path / "model.safetensors").exists():
        subprocess.run(
            [sys.executable, "-m", "parakeet_server.engine.checkpoint", str(path), "--size", size],
            check=True,
        )
    return path


def start_server(
    model: Path, log: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A server on a free port, once SERVING; its output goes to `log`."""
    server = launcher.start_server(
        model,
        log.parent,
        "--max-message-bytes",
        str(launcher.MESSAGE_BYTES),
        *extra,
        log_path=log,
        env=env,
        timeout=1800,  # the full-size model loads and warms in minutes on 2 cores
    )
    return server.process, server.port


def speechlike(seconds: float, rng: np.random.Generator) -> bytes:
    """Noise shaped by a syllable-rate envelope: cheap, deterministic, not silence."""
    n = int(seconds * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / 16000)
    return (rng.normal(0, 0.1, n) * envelope).astype("<f4").tobytes()


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """16-bit PCM WAV of float samples."""
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def paced_requests(
    pcm: bytes, mode: int, started: list[float], closed: list[float], message_seconds: float = 0.1
) -> Iterator[pb.StreamingTranscribeRequest]:
    """A stream of 16 kHz LINEAR16 `pcm` at real-time pace: the config, then one message per
    `message_seconds`, each sent once its audio has been "recorded". Appends the time the audio
    started to `started` and the half-close time to `closed`."""
    per_message = int(16000 * message_seconds) * 2
    yield pb.StreamingTranscribeRequest(
        config=pb.StreamingConfig(
            format=pb.AudioFormat(
                encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000
            ),
            interim_results=True,
            finalization_mode=mode,  # type: ignore[arg-type]
        )
    )
    started.append(time.monotonic())
    for index, offset in enumerate(range(0, len(pcm), per_message)):
        # Message k holds audio recorded until (k + 1) * message_seconds: send it no earlier.
        delay = started[-1] + (index + 1) * message_seconds - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield pb.StreamingTranscribeRequest(audio=pcm[offset : offset + per_message])
    closed.append(time.monotonic())
