"""The audio and transcript caches behind a real server: hits, misses, disk, damage, limits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server


def _info(server: RunningServer) -> pb.GetServerInfoResponse:
    response: pb.GetServerInfoResponse = server.stub().GetServerInfo(
        pb.GetServerInfoRequest(), timeout=10
    )
    return response


def _noise(seed: int, seconds: float = 2.0) -> bytes:
    samples = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds))
    return samples.astype("<f4").tobytes()


def _raw(
    stub: pb_grpc.TranscriptionServiceStub, audio: bytes, **options: object
) -> pb.TranscribeResponse:
    return transcribe(
        stub,
        audio,
        encoding=pb.AudioFormat.ENCODING_FLOAT32,
        sample_rate=16000,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def cached_server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server with the default caches (in memory)."""
    # One request per model call, so that concurrent identical requests compute the same bits
    # (see conftest's `server`).
    running = start_server(tdt_checkpoint, tmp_path_factory.mktemp("logs"), "--max-batch-size", "1")
    yield running
    assert running.stop() == 0, running.log()


def test_a_repeated_request_skips_the_model(cached_server: RunningServer) -> None:
    stub = cached_server.stub()
    audio = _noise(1)
    before = _info(cached_server)
    first = _raw(stub, audio, word_timestamps=True)
    again = _raw(stub, audio, word_timestamps=True)
    assert not first.metrics.cache_hit
    assert not first.metrics.audio_cache_hit
    assert first.metrics.inference_seconds > 0
    assert again.metrics.cache_hit
    assert again.metrics.audio_cache_hit
    assert again.metrics.inference_seconds == 0
    assert again.metrics.chunk_count == 0
    assert again.transcript == first.transcript
    assert again.metrics.audio_seconds == first.metrics.audio_seconds
    after = _info(cached_server)
    assert after.transcript_cache.hits - before.transcript_cache.hits == 1
    assert after.transcript_cache.misses - before.transcript_cache.misses == 1
    assert after.audio_cache.hits - before.audio_cache.hits == 1
    assert after.audio_cache.misses - before.audio_cache.misses == 1
    assert after.audio_cache.entries - before.audio_cache.entries == 1
    assert after.audio_cache.bytes - before.audio_cache.bytes == len(audio)  # float32, 16 kHz
    assert "cache_hit=true audio_cache_hit=true" in cached_server.log()


def test_other_options_reuse_the_audio_but_not_the_transcript(
    cached_server: RunningServer,
) -> None:
    stub = cached_server.stub()
    audio = _noise(2)
    plain = _raw(stub, audio)
    with_words = _raw(stub, audio, word_timestamps=True)
    assert with_words.metrics.audio_cache_hit
    assert not with_words.metrics.cache_hit
    assert with_words.transcript.text == plain.transcript.text
    # Boosted phrases shape the transcript: a boosted request never gets the plain one's (nor
    # one boosted otherwise), and a repeat of it gets its own.
    for boost in (20.0, 19.0):
        boosted = _raw(stub, audio, phrases=[pb.Phrase(text="ab", boost=boost)])
        assert boosted.metrics.audio_cache_hit
        assert not boosted.metrics.cache_hit
        assert boosted.transcript.text != plain.transcript.text
    again = _raw(stub, audio, phrases=[pb.Phrase(text="ab", boost=19.0)])
    assert again.metrics.cache_hit
    assert again.transcript == boosted.transcript
    # The same bytes described as another format are other audio.
    as_linear16 = transcribe(
        stub, audio, encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate=16000
    )
    assert not as_linear16.metrics.audio_cache_hit


def test_transcribe_long_answers_from_the_cache(cached_server: RunningServer) -> None:
    stub = cached_server.stub()
    audio = _noise(3)
    request = pb.TranscribeLongRequest(
        audio=audio,
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_FLOAT32, sample_rate_hertz=16000),
    )
    first = list(stub.TranscribeLong(request, timeout=60))
    again = list(stub.TranscribeLong(request, timeout=60))
    assert [r.is_final for r in again] == [False, True]
    assert again[-1].metrics.cache_hit
    assert again[-1].transcript == first[-1].transcript
    assert list(again[-1].segments) == list(first[-1].transcript.segments)


def test_concurrent_identical_requests_agree(cached_server: RunningServer) -> None:
    stub = cached_server.stub()
    audio = _noise(4)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _raw(stub, audio), range(8)))
    assert len({r.transcript.SerializeToString() for r in results}) == 1
    assert _raw(stub, audio).metrics.cache_hit


def test_the_audio_limit_applies_to_cached_audio(tdt_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    audio = _noise(5, seconds=6.0)
    first = start_server(tdt_checkpoint, tmp_path, "--cache-dir", str(root))
    try:
        _raw(first.stub(), audio)
    finally:
        assert first.stop() == 0
    strict = start_server(
        tdt_checkpoint, tmp_path, "--cache-dir", str(root), "--max-audio-seconds", "5"
    )
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _raw(strict.stub(), audio)
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    finally:
        assert strict.stop() == 0


def test_the_disk_cache_survives_a_restart_and_never_serves_damage(
    tdt_checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    damaged, kept = _noise(6), _noise(7)
    first = start_server(tdt_checkpoint, tmp_path, "--cache-dir", str(root))
    try:
        originals = [_raw(first.stub(), audio) for audio in (damaged, kept)]
    finally:
        assert first.stop() == 0
    files = sorted(root.rglob("transcript-*"))
    assert len(files) == 2
    # Flip one byte in the middle of one of the two transcript files (names are hashes, so
    # which request it belongs to is found out from the answers).
    target = files[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    second = start_server(tdt_checkpoint, tmp_path, "--cache-dir", str(root))
    try:
        stub = second.stub()
        answers = [_raw(stub, audio) for audio in (damaged, kept)]
        info = _info(second)
    finally:
        assert second.stop() == 0
    hits = [a.metrics.cache_hit for a in answers]
    assert sorted(hits) == [False, True]  # the damaged file was not served; the other was
    for answer, original in zip(answers, originals, strict=True):
        assert answer.transcript == original.transcript
    assert info.transcript_cache.disk_rejected == 1
    assert info.transcript_cache.disk_hits == 1
    assert info.audio_cache.disk_hits == 2


def test_caches_can_be_turned_off(tdt_checkpoint: Path, tmp_path: Path) -> None:
    server = start_server(
        tdt_checkpoint, tmp_path, "--audio-cache-bytes", "0", "--transcript-cache-bytes", "0"
    )
    try:
        stub = server.stub()
        audio = _noise(8)
        results = [_raw(stub, audio) for _ in range(2)]
        info = _info(server)
    finally:
        assert server.stop() == 0
    assert not any(r.metrics.cache_hit or r.metrics.audio_cache_hit for r in results)
    assert results[0].transcript == results[1].transcript
    assert info.audio_cache.max_bytes == info.transcript_cache.max_bytes == 0
    assert info.audio_cache.hits == info.audio_cache.misses == 0


def test_audio_named_by_its_digest_needs_no_upload(cached_server: RunningServer) -> None:
    stub = cached_server.stub()
    audio = _noise(9)
    raw = pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_FLOAT32, sample_rate_hertz=16000)
    digest = hashlib.sha256(audio).digest()
    unknown = pb.TranscribeRequest(audio_sha256=digest, format=raw)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Transcribe(unknown, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "send the request again with the audio" in (caught.value.details() or "")
    uploaded = stub.Transcribe(
        pb.TranscribeRequest(audio=audio, audio_sha256=digest, format=raw), timeout=60
    )
    by_digest = stub.Transcribe(unknown, timeout=30)
    assert by_digest.metrics.cache_hit
    assert by_digest.transcript == uploaded.transcript
    assert by_digest.metrics.audio_seconds == uploaded.metrics.audio_seconds
    # Other options: the audio is still known, so the model runs without an upload.
    with_words = stub.Transcribe(
        pb.TranscribeRequest(
            audio_sha256=digest, format=raw, options=pb.TranscriptionOptions(word_timestamps=True)
        ),
        timeout=60,
    )
    assert with_words.metrics.audio_cache_hit
    assert not with_words.metrics.cache_hit
    long = list(stub.TranscribeLong(pb.TranscribeLongRequest(audio_sha256=digest, format=raw)))
    assert long[-1].transcript == uploaded.transcript
    # The same digest in another format is other audio.
    as_container = pb.TranscribeRequest(audio_sha256=digest)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Transcribe(as_container, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("digest", "message"),
    [
        (hashlib.sha256(b"other bytes").digest(), "is not the SHA-256 of the audio sent"),
        (b"\x01" * 16, "must be the 32-byte SHA-256"),
    ],
)
def test_a_wrong_digest_is_invalid_argument(
    cached_server: RunningServer, digest: bytes, message: str
) -> None:
    request = pb.TranscribeRequest(
        audio=_noise(10),
        audio_sha256=digest,
        format=pb.AudioFormat(encoding=pb.AudioFormat.ENCODING_FLOAT32, sample_rate_hertz=16000),
    )
    with pytest.raises(grpc.RpcError) as caught:
        cached_server.stub().Transcribe(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
