"""Shared pieces of the benchmarks: cached random checkpoints, a server on a free port, audio."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

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
