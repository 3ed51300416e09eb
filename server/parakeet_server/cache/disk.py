"""A directory of checksummed cache files, bounded by bytes, shared safely by threads and processes.

Each file is written to a temporary name in the same directory and renamed into place, so a
reader sees either no file or a whole one. Each starts with a header (magic, format version,
name and payload lengths, SHA-256 of name + payload), so a file that is corrupt, truncated,
from another format or under the wrong name is found out, deleted and reported, never served.
Nothing here raises OSError to the caller: disk trouble is logged and reads as a miss.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from parakeet_server.cache.codec import Buffer

logger = logging.getLogger(__name__)

MAGIC = b"PKTCACHE"
FORMAT_VERSION = 1
# magic, format version, name length, payload length, SHA-256 of name + payload
_HEADER = struct.Struct("<8sHHQ32s")
SUFFIX = ".pkc"
_TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,199}")
# Pruning goes down to this share of the budget, so it does not run on every write.
LOW_WATER = 0.9
# Other processes write to the same directory: re-measure it at least this often.
_RESCAN_WRITES = 32
# A temporary file this old belongs to a writer that died.
_STALE_TEMP_SECONDS = 3600.0
_WARN_EVERY_SECONDS = 60.0


class Outcome(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    REJECTED = "rejected"  # a file was there but was not a whole, matching entry: deleted
    ERROR = "error"  # the disk failed us (permissions, I/O): logged


@dataclass(frozen=True)
class Read:
    outcome: Outcome
    payload: Buffer | None = None


class DiskStore:
    """Files named `<name>.pkc` under `root`, pruned oldest-used first to stay within `max_bytes`.

    "Used" is the file's mtime, which a hit refreshes.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._estimated_bytes = 0
        self._writes_since_scan = 0
        self._last_warning = -_WARN_EVERY_SECONDS
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._warn("cannot create the cache directory", error)
        self._prune(quiet=True)

    def load(self, name: str) -> Read:
        path = self._path(name)
        try:
            with path.open("rb") as file:
                data = file.read()
        except FileNotFoundError:
            return Read(Outcome.MISS)
        except OSError as error:
            self._warn(f"cannot read {path.name}", error)
            return Read(Outcome.ERROR)
        payload = _unpack(data, name)
        if payload is None:
            logger.warning("cache file %s is corrupt or not this format: deleted", path)
            self._remove(path)
            return Read(Outcome.REJECTED)
        self.touch(name)
        return Read(Outcome.HIT, payload)

    def touch(self, name: str) -> None:
        """Marks the entry used now, so pruning drops it after entries used longer ago."""
        path = self._path(name)
        try:
            os.utime(path)
        except FileNotFoundError:
            pass  # pruned (by any process) since: nothing to mark
        except OSError as error:
            self._warn(f"cannot mark {path.name} used", error)

    def store(self, name: str, payload: Buffer) -> bool:
        """Writes the entry unless it alone is over the budget; False when the disk failed."""
        size = _HEADER.size + len(name) + len(payload)
        if size > self.max_bytes:
            return True
        header = _pack_header(name, payload)
        path = self._path(name)
        temp_name = None
        try:
            descriptor, temp_name = tempfile.mkstemp(
                prefix=_TEMP_PREFIX, suffix=SUFFIX, dir=self.root
            )
            with os.fdopen(descriptor, "wb") as file:
                file.write(header)
                file.write(name.encode())
                file.write(payload)
            os.replace(temp_name, path)
        except OSError as error:
            self._warn(f"cannot write {path.name}", error)
            if temp_name is not None:
                self._remove(Path(temp_name))
            return False
        with self._lock:
            self._estimated_bytes += size
            self._writes_since_scan += 1
            due = (
                self._estimated_bytes > self.max_bytes or self._writes_since_scan >= _RESCAN_WRITES
            )
        if due:
            self._prune()
        return True

    def discard(self, name: str) -> None:
        self._remove(self._path(name))

    def _prune(self, *, quiet: bool = False) -> None:
        """Measures the directory and deletes the least recently used files over the budget."""
        entries: list[tuple[float, int, Path]] = []
        now = time.time()
        try:
            with os.scandir(self.root) as listing:
                for entry in listing:
                    if not entry.name.endswith(SUFFIX) or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if entry.name.startswith(_TEMP_PREFIX):
                        if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                            self._remove(Path(entry.path))
                        continue
                    entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        except OSError as error:
            if not quiet:
                self._warn("cannot list the cache directory", error)
            return
        total = sum(size for _, size, _ in entries)
        if total > self.max_bytes:
            target = self.max_bytes * LOW_WATER
            for _, size, path in sorted(entries, key=lambda item: item[0]):
                if total <= target:
                    break
                if self._remove(path):
                    total -= size
        with self._lock:
            self._estimated_bytes = total
            self._writes_since_scan = 0

    def _path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ValueError(f"cache entry name {name!r} is not [a-z0-9_-]")
        return self.root / f"{name}{SUFFIX}"

    def _remove(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return True  # someone else removed it: it no longer counts either way
        except OSError as error:
            self._warn(f"cannot delete {path.name}", error)
            return False
        return True

    def _warn(self, what: str, error: OSError) -> None:
        # A full or read-only disk would otherwise log on every request.
        now = time.monotonic()
        level = logging.DEBUG
        with self._lock:
            if now - self._last_warning >= _WARN_EVERY_SECONDS:
                self._last_warning = now
                level = logging.WARNING
        logger.log(level, "disk cache %s: %s: %s (carrying on without it)", self.root, what, error)


def _pack_header(name: str, payload: Buffer) -> bytes:
    digest = hashlib.sha256(name.encode())
    digest.update(payload)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(name), len(payload), digest.digest())


def _unpack(data: bytes, name: str) -> memoryview | None:
    """The payload of a whole, matching file; None for anything else."""
    if len(data) < _HEADER.size:
        return None
    magic, version, name_length, payload_length, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION:
        return None
    if _HEADER.size + name_length + payload_length != len(data):
        return None
    view = memoryview(data)
    stored_name = view[_HEADER.size : _HEADER.size + name_length]
    if stored_name != name.encode():
        return None
    payload = view[_HEADER.size + name_length :]
    digest = hashlib.sha256(stored_name)
    digest.update(payload)
    if digest.digest() != checksum:
        return None
    return payload
