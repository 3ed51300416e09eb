"""The engine in-process: every model kind loads through the production path and decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from parakeet_server.domain import (
    BlockSchedule,
    ChunkingConfig,
    DecodingMethod,
    TranscriptionOptions,
)
from parakeet_server.engine.model import RELEASE_EVERY_BLOCKS, ParakeetEngine
from parakeet_server.errors import InvalidRequest, ModelLoadError


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 0.1, 16000 * 4).astype(np.float32)


@pytest.mark.parametrize("kind", ["tdt", "rnnt", "ctc"])
def test_every_kind_loads_and_transcribes_deterministically(
    checkpoints: dict[str, Path], kind: str, noise: np.ndarray
) -> None:
    engine = ParakeetEngine.load(str(checkpoints[kind]))
    assert engine.info.kind == kind
    assert engine.info.dtype == "float32"
    assert engine.info.min_samples == 1280
    assert engine.warm_up() > 0
    options = TranscriptionOptions(word_timestamps=True)
    first = engine.transcribe(noise, options)
    assert first == engine.transcribe(noise, options)
    assert first.token_ids
    words = [word for segment in first.segments for word in segment.words]
    assert len(words) == first.word_count == len(first.text.split())


@pytest.mark.parametrize("kind", ["tdt", "rnnt"])
def test_beam_search_runs_on_transducers(
    checkpoints: dict[str, Path], kind: str, noise: np.ndarray
) -> None:
    engine = ParakeetEngine.load(str(checkpoints[kind]))
    options = TranscriptionOptions(decoding=DecodingMethod.BEAM, beam_size=2)
    assert engine.transcribe(noise, options) == engine.transcribe(noise, options)


def test_shorter_than_one_encoder_frame_is_refused(checkpoints: dict[str, Path]) -> None:
    engine = ParakeetEngine.load(str(checkpoints["tdt"]))
    # 159 samples crash MLX's STFT outright; the engine must never pass them on.
    for length in (0, 1, 159, 1279):
        with pytest.raises(InvalidRequest, match="at least 80 ms"):
            engine.transcribe(np.zeros(length, dtype=np.float32), TranscriptionOptions())
    engine.transcribe(np.zeros(1280, dtype=np.float32), TranscriptionOptions())


def test_long_audio_is_chunked_with_times_from_the_start(checkpoints: dict[str, Path]) -> None:
    chunking = ChunkingConfig(chunk_seconds=10.0, overlap_seconds=2.0)
    engine = ParakeetEngine.load(str(checkpoints["tdt"]), chunking=chunking)
    audio = np.random.default_rng(4).normal(0, 0.1, 16000 * 35).astype(np.float32)
    result = engine.transcribe(audio, TranscriptionOptions(word_timestamps=True))
    words = [word for segment in result.segments for word in segment.words]
    starts = [word.start for word in words]
    assert starts == sorted(starts)
    assert words[-1].end > 30.0  # the last chunk's words sit at their place in the recording
    assert words[-1].end <= 35.0 + 0.5


def test_steps_settle_segments_that_add_up_to_the_transcript(
    checkpoints: dict[str, Path],
) -> None:
    chunking = ChunkingConfig(chunk_seconds=6.0, overlap_seconds=1.5)
    engine = ParakeetEngine.load(str(checkpoints["tdt"]), chunking=chunking)
    audio = np.random.default_rng(5).normal(0, 0.1, 16000 * 40).astype(np.float32)
    options = TranscriptionOptions(word_timestamps=True, max_words=3)
    steps = list(engine.transcribe_steps(audio, options))
    final = steps[-1].transcript
    assert final is not None
    assert [s.transcript is None for s in steps] == [True] * (len(steps) - 1) + [False]
    assert steps[-1].chunks_total == len(steps) > 5
    processed = [s.processed_seconds for s in steps]
    assert processed == sorted(processed)
    assert processed[-1] == steps[-1].total_seconds == 40.0
    # Segments are settled once and never revised: together they are the transcript's.
    settled = [segment for step in steps for segment in step.segments]
    assert len(final.segments) > 5
    assert tuple(settled) == final.segments
    assert sum(len(s.segments) > 0 for s in steps[:-1]) >= 3  # they arrive along the way
    assert engine.transcribe(audio, options) == final


def test_chunks_in_a_batch_give_the_same_transcript(checkpoints: dict[str, Path]) -> None:
    audio = np.random.default_rng(6).normal(0, 0.1, 16000 * 33).astype(np.float32)
    options = TranscriptionOptions(word_timestamps=True)
    results = []
    for batch_size in (1, 3):
        chunking = ChunkingConfig(chunk_seconds=8.0, overlap_seconds=2.0, batch_size=batch_size)
        engine = ParakeetEngine.load(str(checkpoints["tdt"]), chunking=chunking)
        steps = list(engine.transcribe_steps(audio, options))
        results.append((len(steps), steps[-1].transcript))
    (one_steps, one), (batched_steps, batched) = results
    assert one_steps == 6
    assert batched_steps == 2
    assert one is not None
    assert batched is not None
    assert batched.token_ids == one.token_ids
    assert batched.text == one.text


def test_missing_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        ParakeetEngine.load(str(tmp_path / "nothing"))


def test_corrupt_weights_are_a_load_error(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes((checkpoints["tdt"] / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="could not load model from"):
        ParakeetEngine.load(str(tmp_path))
    # A failed load leaves the thread able to load and run a good model.
    engine = ParakeetEngine.load(str(checkpoints["tdt"]))
    engine.transcribe(np.zeros(16000, np.float32), TranscriptionOptions())


def test_unknown_dtype_is_a_load_error(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="dtype"):
        ParakeetEngine.load(str(checkpoints["tdt"]), dtype="int3")


def test_a_long_stream_gives_back_cached_memory_every_few_blocks(
    checkpoints: dict[str, Path],
) -> None:
    """A live stream is one request, so it cannot wait for a request's end to release what MLX
    caches and glibc keeps: the engine does it every RELEASE_EVERY_BLOCKS blocks."""
    engine = ParakeetEngine.load(str(checkpoints["tdt"]))
    session = engine.open_stream(BlockSchedule())
    audio = np.random.default_rng(6).normal(0, 0.1, 16000 * 120).astype(np.float32)
    fed, cached = 0, []
    for _ in range(2 * RELEASE_EVERY_BLOCKS + 2):  # one block a call
        needed = session.samples_for_next_block()
        engine.stream_block(session, audio[fed:needed])
        fed = needed
        cached.append(engine.memory().mlx_cache)
    released = [block for block, size in enumerate(cached, 1) if size == 0]
    assert released == [RELEASE_EVERY_BLOCKS, 2 * RELEASE_EVERY_BLOCKS], cached
