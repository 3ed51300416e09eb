"""Process memory from /proc (Linux), the one reader of it for the server, tests and benches."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path


def resident_bytes(pid: int | None = None) -> int:
    """Resident memory of `pid` (this process by default) now; 0 if it cannot be read.

    Where /proc is missing (macOS), this process's peak is the best there is; other processes
    read 0 there.
    """
    try:
        with open(f"/proc/{'self' if pid is None else pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        if pid is not None or Path("/proc/self").exists():
            return 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (all its threads'), [] if it is gone."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children.extend(int(child) for child in (task / "children").read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        return []
    return children


def tree_resident_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (shared pages count once per process)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        total += resident_bytes(current)
        pending.extend(child_pids(current))
    return total
