"""What the server's memory is made of, on request: the tool for telling a leak from work in
flight (bench/soak.py reads these reports at its quiescent points).

`kill -USR1 <server pid>` writes `memory-<n>.json` into --memory-report-dir: the server
process's resident memory and C heap, its Python objects by type, Python's traced allocations
when it runs under tracemalloc (`PYTHONTRACEMALLOC=<frames>`; then also a snapshot,
`memory-<n>.tracemalloc`, to diff with `tracemalloc.Snapshot.load`), and what the model worker
holds (resident, MLX arrays, cache and peak, its C heap). Without a directory the signal logs
one line of the same figures. Collecting them walks every Python object: ~0.1-0.5 s, on the
event loop, so it is a diagnostic, never done on its own.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parakeet_server.ops.heap import heap_figures
from parakeet_server.ops.proc import resident_bytes

log = logging.getLogger("parakeet_server.memory")

TOP_TYPES = 25


def python_objects(top: int = TOP_TYPES) -> tuple[int, list[tuple[str, int]]]:
    """How many objects the garbage collector tracks, and the `top` types by count."""
    gc.collect()
    counts = Counter(type(item).__qualname__ for item in gc.get_objects())
    return sum(counts.values()), counts.most_common(top)


def memory_report(worker: dict[str, int]) -> dict[str, Any]:
    """The figures of one report (without the tracemalloc snapshot)."""
    objects, top_types = python_objects()
    heap_in_use, heap_free = heap_figures()
    report: dict[str, Any] = {
        "time": time.time(),
        "pid": os.getpid(),
        "server": {
            "resident": resident_bytes(),
            "heap_in_use": heap_in_use,
            "heap_free": heap_free,
            "python_objects": objects,
            "python_top_types": top_types,
        },
        "worker": worker,
    }
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        report["server"]["python_traced"] = current
        report["server"]["python_traced_peak"] = peak
    return report


class MemoryReporter:
    """Writes numbered reports into `directory` (or logs a line when it is None)."""

    def __init__(self, directory: str | None, worker: Callable[[], dict[str, int]]) -> None:
        self._directory = Path(directory) if directory else None
        self._worker = worker
        self._count = 0

    def report(self) -> Path | None:
        """One report; returns the JSON file written, if any."""
        figures = memory_report(self._worker())
        if self._directory is None:
            server = figures["server"]
            log.info(
                "memory rss=%.1fMB heap_in_use=%.1fMB heap_free=%.1fMB python_objects=%d worker=%s",
                server["resident"] / 1e6,
                server["heap_in_use"] / 1e6,
                server["heap_free"] / 1e6,
                server["python_objects"],
                " ".join(f"{k}={v / 1e6:.1f}MB" for k, v in figures["worker"].items()) or "-",
            )
            return None
        self._count += 1
        self._directory.mkdir(parents=True, exist_ok=True)
        stem = self._directory / f"memory-{self._count}"
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(stem.with_suffix(".tracemalloc")))
            figures["tracemalloc_snapshot"] = str(stem.with_suffix(".tracemalloc"))
        path = stem.with_suffix(".json")
        partial = stem.with_suffix(".json.partial")
        partial.write_text(json.dumps(figures, indent=1))
        partial.replace(path)  # readers never see half a report
        log.info("memory report written path=%s", path)
        return path

    def on_signal(self) -> None:
        try:
            self.report()
        except OSError as error:
            log.error("cannot write the memory report: %s", error)
