"""What the model process needs of its native runtime, apart from the model itself.

BLAS. Puts MLX's CPU matrix multiplies on an optimized BLAS on Linux; call before importing mlx.

The Linux `mlx-cpu` wheel bundles netlib's reference BLAS (~5 GFLOP/s on the machines we
measured). MLX resolves `cblas_sgemm` through the dynamic linker, and symbols of a library
loaded with RTLD_GLOBAL before `mlx.core` take precedence over the bundled ones, so loading
OpenBLAS first is enough: no LD_PRELOAD, no re-exec, no manual step (measured 135 GFLOP/s).

Threads. Since mlx 0.32 each thread that used MLX must destroy its streams before the
interpreter finalizes (`release_thread_resources`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from parakeet_server.domain import ModelInfo

log = logging.getLogger("parakeet_server.engine.model")

ENV_VAR = "PARAKEET_BLAS"
BUNDLED = "bundled"

# Most specific first: Debian/Ubuntu multiarch (pthread builds scale best for one big
# matmul at a time), then Fedora/RHEL/Arch names, then whatever the linker can find.
_MULTIARCH = f"{platform.machine()}-linux-gnu"
_CANDIDATES = (
    ("openblas-pthread", f"/usr/lib/{_MULTIARCH}/openblas-pthread/libblas.so.3"),
    ("openblas-openmp", f"/usr/lib/{_MULTIARCH}/openblas-openmp/libblas.so.3"),
    ("openblas-serial", f"/usr/lib/{_MULTIARCH}/openblas-serial/libblas.so.3"),
    ("openblas", "/usr/lib64/libopenblasp.so.0"),
    ("openblas", "/usr/lib64/libopenblas.so.0"),
    ("openblas", "/usr/lib/libopenblas.so.0"),
)


@dataclass(frozen=True)
class BlasChoice:
    """Which BLAS MLX's CPU backend uses, and why."""

    name: str
    path: str | None
    detail: str


def _find_openblas() -> tuple[str, str] | None:
    for name, path in _CANDIDATES:
        if Path(path).exists():
            return name, path
    found = ctypes.util.find_library("openblas")
    return ("openblas", found) if found else None


_chosen: BlasChoice | None = None


def use_fast_blas(requested: str | None = None) -> BlasChoice:
    """Loads an optimized BLAS globally so that MLX picks it up; the first call decides.

    `requested` (or $PARAKEET_BLAS) is a library path to use, or "bundled" to keep the
    wheel's own BLAS. On macOS MLX uses Accelerate and nothing is done.
    """
    global _chosen
    if _chosen is None:
        _chosen = _choose(requested)
    return _chosen


def _choose(requested: str | None) -> BlasChoice:
    if sys.platform != "linux":
        return BlasChoice("accelerate" if sys.platform == "darwin" else "default", None, "")
    requested = requested or os.environ.get(ENV_VAR) or None
    if requested == BUNDLED:
        return BlasChoice(BUNDLED, None, f"kept the mlx wheel's BLAS ({ENV_VAR}=bundled)")
    if "mlx.core" in sys.modules:
        return BlasChoice(BUNDLED, None, "mlx was imported before an optimized BLAS could load")
    if requested:
        candidate: tuple[str, str] | None = (Path(requested).name, requested)
    else:
        candidate = _find_openblas()
    if candidate is None:
        return BlasChoice(
            BUNDLED,
            None,
            "no OpenBLAS found; MLX runs on the mlx wheel's reference BLAS, ~30x slower. "
            "Install it (Debian/Ubuntu: apt-get install libopenblas0-pthread; "
            "Fedora: dnf install openblas) or point PARAKEET_BLAS at a libblas",
        )
    name, path = candidate
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        return BlasChoice(BUNDLED, None, f"could not load {path}: {error}")
    return BlasChoice(name, path, f"loaded {path}")


# --- diagnostics and threads


def release_thread_resources() -> None:
    """Destroys the calling thread's MLX streams; the last MLX call a thread makes.

    Since mlx 0.32 a thread's streams must be destroyed by that thread before the interpreter
    finalizes, or the process aborts at exit (ml-explore/mlx#4327).
    """
    import mlx.core as mx

    mx.clear_streams()


def matmul_gflops(n: int = 512, repeats: int = 4) -> float:
    """A quick float32 matmul rate, to show in the startup log which BLAS is really in use."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    started = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    seconds = (time.perf_counter() - started) / repeats
    return 2 * n**3 / seconds / 1e9


def log_blas(choice: BlasChoice, info: ModelInfo) -> None:
    if info.device != "cpu":
        return
    message = "blas=%s matmul=%.0fGFLOP/s (%s)"
    if choice.name == "bundled":
        log.warning(message, choice.name, info.matmul_gflops, choice.detail)
    else:
        log.info(message, choice.name, info.matmul_gflops, choice.detail)
