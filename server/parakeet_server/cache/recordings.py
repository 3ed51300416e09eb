"""A unary request's audio, through the caches: decoded PCM, and the transcript if known.

Blocking (hashing, decoding, disk): call from a worker thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from parakeet_server.audio.decode import DecodedAudio, Encoding, check_duration, decode_audio
from parakeet_server.cache.store import Caches, audio_key_from_digest, transcript_key
from parakeet_server.domain import Transcript, TranscriptionOptions
from parakeet_server.errors import AudioNotCached, InvalidRequest

DIGEST_BYTES = 32  # SHA-256


@dataclass(frozen=True, eq=False)
class Recording:
    """Decoded audio and what the caches knew about it."""

    audio: DecodedAudio
    audio_cache_hit: bool = False
    transcript: Transcript | None = None  # from the transcript cache
    transcript_key: str | None = None


@dataclass(frozen=True)
class ResultShape:
    """What besides audio and options decides a transcript: part of the transcript key."""

    model_id: str
    dtype: str
    chunk_seconds: float
    chunk_overlap_seconds: float


def model_identity(model: str) -> str:
    """The model id for cache keys: a local directory also by its weights' size and mtime, so
    that replacing the files there never serves transcripts of the old weights."""
    weights = Path(model).expanduser() / "model.safetensors"
    try:
        stat = weights.stat()
    except OSError:
        return model
    return f"{weights.parent.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class RecordingLoader:
    """Decodes request audio, answering from the caches where it can."""

    def __init__(
        self, caches: Caches, shape: ResultShape, on_decode: Callable[[], object] | None = None
    ) -> None:
        self._caches = caches
        self._shape = shape
        self._on_decode = on_decode  # called before each decode (a metric's counter)

    def load(
        self,
        data: bytes,
        *,
        encoding: Encoding,
        sample_rate: int,
        channels: int,
        target_rate: int,
        max_seconds: float,
        options: TranscriptionOptions,
        digest: bytes = b"",
    ) -> Recording:
        """The request's audio, decoded or from the cache. With `digest` (the SHA-256 of the
        audio) and no `data`, only the cache can answer: AudioNotCached otherwise."""

        def decode() -> DecodedAudio:
            if self._on_decode is not None:
                self._on_decode()
            return decode_audio(
                data,
                encoding=encoding,
                sample_rate=sample_rate,
                channels=channels,
                target_rate=target_rate,
                max_seconds=max_seconds,
            )

        audio_cache, transcripts = self._caches.audio, self._caches.transcripts
        if digest and len(digest) != DIGEST_BYTES:
            raise InvalidRequest(
                f"audio_sha256 must be the {DIGEST_BYTES}-byte SHA-256 of the audio, not "
                f"{len(digest)} bytes"
            )
        if not data and digest:
            if not audio_cache.enabled:
                raise AudioNotCached(
                    "this server keeps no audio cache (--audio-cache-bytes 0): send the audio"
                )
        elif not (audio_cache.enabled or transcripts.enabled or digest) or not data:
            return Recording(decode())
        else:
            actual = hashlib.sha256(data).digest()
            if digest and digest != actual:
                raise InvalidRequest(
                    "audio_sha256 is not the SHA-256 of the audio sent; send the digest of "
                    "exactly the bytes in `audio`, or leave it empty"
                )
            digest = actual
        key = audio_key_from_digest(
            digest,
            encoding=encoding,
            sample_rate=sample_rate,
            channels=channels,
            target_rate=target_rate,
        )
        result_key = None
        if transcripts.enabled:
            shape = self._shape
            result_key = transcript_key(
                key,
                model_id=shape.model_id,
                dtype=shape.dtype,
                options=options,
                chunk_seconds=shape.chunk_seconds,
                chunk_overlap_seconds=shape.chunk_overlap_seconds,
            )
        samples = audio_cache.get(key)
        if samples is None and not data:
            raise AudioNotCached(
                "the server holds no audio with this audio_sha256 in this format (never sent, "
                "or evicted since): send the request again with the audio"
            )
        if samples is not None:
            # Cached under a higher limit, perhaps: the limit of now applies.
            check_duration(len(samples) / target_rate, max_seconds)
            audio = DecodedAudio(samples, target_rate, "cached", 0, 0)
        else:
            audio = decode()
            audio_cache.put(key, audio.samples)
        known = transcripts.get(result_key) if result_key is not None else None
        return Recording(audio, samples is not None, known, result_key)

    def remember(self, recording: Recording, transcript: Transcript) -> None:
        if recording.transcript_key is not None:
            self._caches.transcripts.put(recording.transcript_key, transcript)
