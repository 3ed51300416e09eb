"""Shared pieces of the benchmarks: cached random checkpoints, a server on a free port, audio."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parakeet-server" / "bench"


def checkpoint(size: str) -> Path:
    path = CACHE / f"tdt-{size}"
    if not (path / "model.safetensors").exists():
        subprocess.run(
            [sys.executable, "-m", "parakeet_server.engine.checkpoint", str(path), "--size", size],
            check=True,
        )
    return path


def start_server(model: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
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
                *extra,
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
