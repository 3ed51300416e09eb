"""Reading a running server's memory reports (ops/memory_report.py) from outside: the soak's
and the leak test's one way to ask "what does it hold now, and what grew".

The server must run with `--memory-report-dir DIR`; under `PYTHONTRACEMALLOC=<frames>` each
report also carries a tracemalloc snapshot, which `grown_sites` diffs.
"""

from __future__ import annotations

import json
import os
import signal
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc

PACKAGE_FILES = "*/parakeet_server/*"


@dataclass(frozen=True)
class MemoryReport:
    """One report: the figures, and where its tracemalloc snapshot lies (if any)."""

    figures: dict[str, Any]
    path: Path

    @property
    def server(self) -> dict[str, Any]:
        figures: dict[str, Any] = self.figures["server"]
        return figures

    @property
    def worker(self) -> dict[str, int]:
        figures: dict[str, int] = self.figures["worker"]
        return figures

    def snapshot(self) -> tracemalloc.Snapshot | None:
        name = self.figures.get("tracemalloc_snapshot")
        return tracemalloc.Snapshot.load(name) if name else None

    def package_traced_bytes(self, pattern: str = PACKAGE_FILES) -> int:
        """Bytes of live Python allocations with a frame in the server's own code in their
        traceback (so a leak through a library call made by our code counts)."""
        snapshot = self.snapshot()
        if snapshot is None:
            raise ValueError("this report has no tracemalloc snapshot (set PYTHONTRACEMALLOC)")
        ours = snapshot.filter_traces([tracemalloc.Filter(True, pattern, all_frames=True)])
        return sum(stat.size for stat in ours.statistics("filename"))


def wait_quiet(
    stub: pb_grpc.TranscriptionServiceStub, timeout: float = 120.0, settle: float = 1.5
) -> None:
    """Returns once the server has no stream open (a cancelled one closes asynchronously),
    and `settle` seconds more for the last replies' bookkeeping (releases, heap trims)."""
    deadline = time.monotonic() + timeout
    while stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).active_streams:
        if time.monotonic() > deadline:
            raise TimeoutError(f"streams stayed open {timeout:g} s after the clients finished")
        time.sleep(0.1)
    time.sleep(settle)


class MemoryProbe:
    """Asks the server `pid` for reports (SIGUSR1) and reads them from `directory`."""

    def __init__(self, pid: int, directory: Path) -> None:
        self.pid = pid
        self.directory = directory
        self._seen = 0

    def report(self, timeout: float = 120.0) -> MemoryReport:
        self._seen += 1
        path = self.directory / f"memory-{self._seen}.json"
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server wrote no {path.name} within {timeout:g} s")
            time.sleep(0.05)
        return MemoryReport(json.loads(path.read_text()), path)


def grown_sites(
    before: MemoryReport, after: MemoryReport, limit: int = 8
) -> list[tracemalloc.StatisticDiff]:
    """The allocation tracebacks whose live bytes grew most from `before` to `after`."""
    old, new = before.snapshot(), after.snapshot()
    if old is None or new is None:
        return []
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diffs = new.filter_traces(ignore).compare_to(old.filter_traces(ignore), "traceback")
    return [diff for diff in diffs if diff.size_diff > 0][:limit]


def describe_site(diff: tracemalloc.StatisticDiff) -> str:
    """'+123.4 KB +56 objects at file:line (via our file:line)' for one grown site."""
    frames = list(diff.traceback)
    innermost = frames[-1] if frames else None
    ours = next(
        (frame for frame in reversed(frames) if "/parakeet_server/" in frame.filename), None
    )
    where = f"{_short(innermost.filename)}:{innermost.lineno}" if innermost else "?"
    via = f" (via {_short(ours.filename)}:{ours.lineno})" if ours and ours != innermost else ""
    return f"{diff.size_diff / 1e3:+.1f} KB {diff.count_diff:+d} objects at {where}{via}"


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/server/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
