"""Content-addressed caches of decoded audio and finished transcripts: LRU in memory, then disk.

Level 1 maps the request's audio bytes and format to the decoded 16 kHz mono PCM; level 2 maps
that audio, the model and everything else that shapes the result to the finished Transcript.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from parakeet_server import __version__
from parakeet_server.audio.decode import Encoding
from parakeet_server.cache.codec import PCM_CODEC, TRANSCRIPT_CODEC, Codec
from parakeet_server.cache.disk import DiskStore, Outcome
from parakeet_server.domain import Transcript, TranscriptionOptions

if TYPE_CHECKING:
    from parakeet_server.config import ServerConfig

V = TypeVar("V")

# Bump to orphan every key (and so every file on disk) when what a key covers changes.
_KEY_VERSION = 2
# Libraries whose upgrade may change a result: their versions are part of the keys, so a disk
# cache kept across an upgrade never serves what the new code would not give.
_AUDIO_LIBRARIES = ("numpy", "soundfile", "av", "soxr")
_TRANSCRIPT_LIBRARIES = ("parakeet-mlx", "mlx")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    size: int
    touched: float  # time.monotonic() when its disk file was last marked used


@dataclass(frozen=True)
class CacheStats:
    """One cache's figures since it was made; field for field the proto's CacheStats."""

    max_bytes: int = 0
    bytes: int = 0
    entries: int = 0
    hits: int = 0  # memory or disk
    misses: int = 0
    evictions: int = 0  # dropped from memory to stay within max_bytes
    disk_hits: int = 0
    disk_rejected: int = 0  # corrupt, truncated or foreign files found on disk: deleted
    disk_errors: int = 0  # reads and writes the disk refused


class LruCache(Generic[V]):
    """A byte-bounded LRU map, thread-safe, with an optional disk store behind it.

    `max_bytes` 0 turns the cache off: `get` answers None and `put` does nothing. A value larger
    than `max_bytes` is not kept in memory (it still goes to disk if the disk takes it).
    """

    def __init__(
        self,
        name: str,
        max_bytes: int,
        codec: Codec[V],
        disk: DiskStore | None = None,
        *,
        disk_touch_seconds: float = 60.0,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        self.name = name
        self.max_bytes = max_bytes
        self._codec = codec
        self._disk = disk if max_bytes > 0 else None
        # Memory hits mark the disk file used at most this often, so the disk's LRU order also
        # follows entries that are only ever served from memory.
        self._disk_touch_seconds = disk_touch_seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._disk_hits = self._disk_rejected = self._disk_errors = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: str) -> V | None:
        if not self.enabled:
            return None
        touch = False
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                now = time.monotonic()
                if self._disk is not None and now - found.touched >= self._disk_touch_seconds:
                    found.touched = now
                    touch = True
            elif self._disk is None:
                self._misses += 1
                return None
        if found is not None:
            if touch and self._disk is not None:
                self._disk.touch(self._disk_name(key))
            return found.value
        value = self._load(key)
        size = 0 if value is None else self._codec.size(value)
        with self._lock:
            if value is None:
                self._misses += 1
            else:
                self._hits += 1
                self._disk_hits += 1
                self._insert(key, value, size)
        return value

    def put(self, key: str, value: V) -> None:
        """Keeps `value` under `key`. Values are shared, not copied: do not change them after."""
        if not self.enabled:
            return
        value = self._codec.freeze(value)
        size = self._codec.size(value)
        with self._lock:
            self._insert(key, value, size)
        if self._disk is not None and not self._disk.store(
            self._disk_name(key), self._codec.encode(value)
        ):
            with self._lock:
                self._disk_errors += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                max_bytes=self.max_bytes,
                bytes=self._bytes,
                entries=len(self._entries),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                disk_hits=self._disk_hits,
                disk_rejected=self._disk_rejected,
                disk_errors=self._disk_errors,
            )

    def _insert(self, key: str, value: V, size: int) -> None:
        """With the lock held."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        if size > self.max_bytes:
            return
        self._entries[key] = _Entry(value, size, time.monotonic())
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self._evictions += 1

    def _load(self, key: str) -> V | None:
        """The value on disk, or None; counts rejected files and disk errors."""
        assert self._disk is not None
        name = self._disk_name(key)
        read = self._disk.load(name)
        if read.outcome is Outcome.HIT and read.payload is not None:
            try:
                return self._codec.decode(read.payload)
            except ValueError:
                # Whole and checksummed, yet not a value of ours (written by other code).
                self._disk.discard(name)
                read = dataclasses.replace(read, outcome=Outcome.REJECTED)
        with self._lock:
            if read.outcome is Outcome.REJECTED:
                self._disk_rejected += 1
            elif read.outcome is Outcome.ERROR:
                self._disk_errors += 1
        return None

    def _disk_name(self, key: str) -> str:
        return f"{self.name}-{key}"


def audio_key(
    audio: bytes, *, encoding: Encoding, sample_rate: int, channels: int, target_rate: int
) -> str:
    """SHA-256 (hex) of the audio bytes' digest and everything `decode_audio` reads besides them.

    Container files carry their own rate and channels, so the request's are left out for them;
    raw channels 0 means 1, as in `decode_audio`.
    """
    return audio_key_from_digest(
        hashlib.sha256(audio).digest(),
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        target_rate=target_rate,
    )


def audio_key_from_digest(
    digest: bytes, *, encoding: Encoding, sample_rate: int, channels: int, target_rate: int
) -> str:
    """audio_key() from the SHA-256 of the audio alone, as a client may send it instead."""
    if encoding is Encoding.CONTAINER:
        sample_rate = channels = 0
    else:
        channels = channels or 1
    header = _canonical(
        {
            "v": _KEY_VERSION,
            "encoding": encoding.value,
            "sample_rate": sample_rate,
            "channels": channels,
            "target_rate": target_rate,
            "versions": _versions(_AUDIO_LIBRARIES),
        }
    )
    key = hashlib.sha256(b"parakeet-audio\0")
    key.update(header)
    key.update(b"\0")  # canonical JSON never holds a NUL: the header ends unambiguously
    key.update(digest)
    return key.hexdigest()


def transcript_key(
    audio: str,
    *,
    model_id: str,
    dtype: str,
    options: TranscriptionOptions,
    chunk_seconds: float,
    chunk_overlap_seconds: float,
) -> str:
    """SHA-256 (hex) of the audio key and everything that shapes the transcript of that audio.

    `model_id` must name the weights, not just where they are: for a local directory whose
    files may be replaced, include something that changes with them (a hash, size and mtime).
    """
    document = {
        "v": _KEY_VERSION,
        "audio": audio,
        "model": model_id,
        "dtype": dtype,
        "options": dataclasses.asdict(options),
        "chunk_seconds": chunk_seconds,
        "chunk_overlap_seconds": chunk_overlap_seconds,
        "versions": _versions(_TRANSCRIPT_LIBRARIES),
    }
    return hashlib.sha256(b"parakeet-transcript\0" + _canonical(document)).hexdigest()


def _canonical(document: Mapping[str, object]) -> bytes:
    """The same bytes for equal documents in any process: sorted keys, enums by value."""

    def encode_other(value: object) -> object:
        if isinstance(value, enum.Enum):
            return value.value
        raise TypeError(f"cannot put {type(value).__name__} in a cache key")

    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=encode_other
    ).encode()


@cache
def _versions(libraries: tuple[str, ...]) -> dict[str, str]:
    versions = {"parakeet-server": __version__}
    for library in libraries:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = "absent"
    return versions


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/parakeet-server, or ~/.cache/parakeet-server (the XDG default)."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and is to be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "parakeet-server"


def resolve_cache_dir(setting: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """`--cache-dir`: empty for memory only, `default` for the XDG location, else a path."""
    if not setting:
        return None
    if setting == "default":
        return default_cache_dir(environ)
    return Path(setting).expanduser().absolute()


@dataclass(frozen=True)
class Caches:
    """The server's two caches, sharing one disk store (if any)."""

    audio: LruCache[NDArray[np.float32]]
    transcripts: LruCache[Transcript]
    disk: DiskStore | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, environ: Mapping[str, str] | None = None) -> Caches:
        root = resolve_cache_dir(config.cache_dir, environ)
        wanted = config.audio_cache_bytes > 0 or config.transcript_cache_bytes > 0
        disk = None
        if root is not None and config.disk_cache_bytes > 0 and wanted:
            disk = DiskStore(root, config.disk_cache_bytes)
        return cls(
            audio=LruCache("audio", config.audio_cache_bytes, PCM_CODEC, disk),
            transcripts=LruCache(
                "transcript", config.transcript_cache_bytes, TRANSCRIPT_CODEC, disk
            ),
            disk=disk,
        )
