"""The streaming engine in-process: its maths against the model's own full-context path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from parakeet_mlx.audio import get_logmel
from parakeet_mlx.utils import from_pretrained

from parakeet_server.domain import BlockSchedule
from parakeet_server.engine.features import StreamingFeatures, log_mel
from parakeet_server.engine.streaming import (
    StreamingSession,
    local_attention,
    project_positions,
)

WHOLE = BlockSchedule(block_frames=100_000, lookahead_frames=0, left_context_frames=100_000)


@pytest.fixture(scope="module")
def model(checkpoints: dict[str, Path]) -> Any:
    loaded = from_pretrained(str(checkpoints["tdt"]), dtype=mx.float32)
    mx.eval(loaded.parameters())
    return loaded


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return np.random.default_rng(5).normal(0, 0.1, 16000 * 6 + 77).astype(np.float32)


def _pieces(samples: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(1, 2500, size=len(samples)))
    cuts = cuts[cuts < len(samples)]
    return np.split(samples, cuts)


def test_streaming_features_equal_the_whole_signal_log_mel(model: Any, audio: np.ndarray) -> None:
    features = StreamingFeatures(model.preprocessor_config)
    frames = [features.accept(piece) for piece in _pieces(audio, 1)]
    raw = mx.concatenate([*frames, features.finish()])
    normalised = (raw - raw.mean(0)) / (mx.std(raw, 0) + 1e-5)
    reference = get_logmel(mx.array(audio), model.preprocessor_config)[0]
    assert normalised.shape == reference.shape
    assert float(mx.max(mx.abs(normalised - reference))) < 1e-4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streaming_features_are_the_same_bits_however_the_audio_is_split(
    model: Any, audio: np.ndarray, seed: int
) -> None:
    """A stream's result may not depend on how its audio came in messages: each frame's
    features must be the same to the last bit when computed with other frames around it."""
    whole = StreamingFeatures(model.preprocessor_config)
    reference = np.array(mx.concatenate([whole.accept(audio), whole.finish()]))
    split = StreamingFeatures(model.preprocessor_config)
    frames = [split.accept(piece) for piece in _pieces(audio, seed)]
    np.testing.assert_array_equal(np.array(mx.concatenate([*frames, split.finish()])), reference)


def test_local_attention_equals_full_attention_inside_its_window(model: Any) -> None:
    layer = model.encoder.layers[0]
    x = mx.random.normal((1, 40, model.encoder_config.d_model), key=mx.random.key(0))
    _, pos_emb = model.encoder.pos_enc(x)
    full = layer.self_attn(x, x, x, pos_emb=pos_emb)
    local, _, _ = local_attention(layer.self_attn, x, None, None, model.encoder.pos_enc._pe)
    assert float(mx.max(mx.abs(local - full))) < 1e-4


def test_local_attention_with_cached_keys_equals_the_later_rows_of_full_attention(
    model: Any,
) -> None:
    attn = model.encoder.layers[1].self_attn
    table = model.encoder.pos_enc._pe
    x = mx.random.normal((1, 30, model.encoder_config.d_model), key=mx.random.key(1))
    _, pos_emb = model.encoder.pos_enc(x)
    full = attn(x, x, x, pos_emb=pos_emb)
    _, keys, values = local_attention(attn, x[:, :18], None, None, table)
    later, _, _ = local_attention(attn, x[:, 18:], keys, values, table)
    assert float(mx.max(mx.abs(later - full[:, 18:]))) < 1e-4


def test_one_step_over_the_whole_stream_equals_the_full_encoder(
    model: Any, audio: np.ndarray
) -> None:
    session = StreamingSession(model, WHOLE)
    for piece in _pieces(audio, 2):
        session.accept(piece)
    session.finish()
    reference = model.generate(get_logmel(mx.array(audio), model.preprocessor_config))[0]
    assert [t.id for t in session.tokens] == [t.id for t in reference.tokens]
    assert [t.start for t in session.tokens] == pytest.approx([t.start for t in reference.tokens])


def test_blocks_depend_on_audio_position_not_on_how_it_arrived(
    model: Any, audio: np.ndarray
) -> None:
    settings = BlockSchedule(block_frames=6, lookahead_frames=3, left_context_frames=40)

    def run(pieces: list[np.ndarray], step_early: bool) -> list[int]:
        session = StreamingSession(model, settings)
        for piece in pieces:
            session.accept(piece)
            while step_early and session.pending_blocks():
                session.step()
        session.finish()
        return [t.id for t in session.tokens]

    reference = run([audio], step_early=False)
    assert run(_pieces(audio, 3), step_early=True) == reference
    assert run(_pieces(audio, 4), step_early=False) == reference


@pytest.mark.parametrize("extra", [0, 1, 5, 9, 13, 16])
def test_finish_commits_no_frame_with_less_after_it_than_the_lookahead(
    model: Any, audio: np.ndarray, extra: int
) -> None:
    """At the end every frame still hears its look-ahead (or all audio up to the end): the
    frames after the last full block are committed in one step, never block by block
    without look-ahead; and no step is larger than block + look-ahead frames."""
    settings = BlockSchedule(block_frames=6, lookahead_frames=3, left_context_frames=40)
    session = StreamingSession(model, settings)
    steps: list[tuple[int, int, int]] = []
    encode = session._encode

    def recorded(start: int, end: int, ahead: int) -> mx.array:
        steps.append((start, end, ahead))
        return encode(start, end, ahead)

    session._encode = recorded  # type: ignore[method-assign]
    session.accept(audio[: 16000 * 2 + extra * 640])  # the tail varies with `extra`
    session.finish()
    factor = model.encoder_config.subsampling_factor
    total = math.ceil((session._mel_offset + session._mel.shape[0]) / factor)
    assert steps[-1][1] == total == round(session.committed_seconds / model.time_ratio)
    for start, end, ahead in steps:
        assert ahead == min(total, end + settings.lookahead_frames), (start, end, ahead, total)
        assert ahead - start <= settings.block_frames + settings.lookahead_frames
    assert [end for _, end, _ in steps[:-1]] == [start for start, _, _ in steps[1:]]


def test_per_step_work_is_bounded_by_block_lookahead_and_left_context(model: Any) -> None:
    settings = BlockSchedule(block_frames=4, lookahead_frames=2, left_context_frames=10)
    session = StreamingSession(model, settings)
    rng = np.random.default_rng(6)
    for _ in range(30):
        session.accept(rng.normal(0, 0.1, 16000).astype(np.float32))
        while session.pending_blocks():
            session.step()
            # What each step keeps: at most the left context of keys per layer, and mel only
            # for the next window — never the stream's history.
            assert session._caches[0].keys is not None
            assert session._caches[0].keys[0].shape[1] <= settings.left_context_frames
            window = (settings.block_frames + settings.lookahead_frames + 4) * 8
            assert session._mel.shape[0] <= window + 8 * 30
    assert session.committed_seconds > 25


def test_samples_for_next_block_is_exact(model: Any) -> None:
    settings = BlockSchedule(block_frames=5, lookahead_frames=2, left_context_frames=20)
    session = StreamingSession(model, settings)
    needed = session.samples_for_next_block()
    session.accept(np.zeros(needed - 1, np.float32))
    assert session.pending_blocks() == 0
    session.accept(np.zeros(1, np.float32))
    assert session.pending_blocks() == 1
    session.step()
    assert session.samples_for_next_block() - needed == 5 * 1280
    assert math.isclose(session.committed_seconds, 0.4)


def test_precomputed_position_table_gives_the_same_attention(model: Any) -> None:
    attn = model.encoder.layers[0].self_attn
    table = model.encoder.pos_enc._pe
    x = mx.random.normal((1, 30, model.encoder_config.d_model), key=mx.random.key(2))
    _, keys, values = local_attention(attn, x[:, :20], None, None, table)
    direct, _, _ = local_attention(attn, x[:, 20:], keys, values, table)
    top = 40  # covers relative positions up to 20 past + 10 new - 1
    projected = project_positions(attn, table, -15, top, x.dtype)
    cached, _, _ = local_attention(attn, x[:, 20:], keys, values, table, (projected, top))
    assert float(mx.max(mx.abs(cached - direct))) < 1e-5


@pytest.mark.parametrize("length", [1280, 4000, 16000 * 3 + 159])
def test_whole_signal_log_mel_equals_parakeet_mlx(model: Any, length: int) -> None:
    samples = np.random.default_rng(length).normal(0, 0.1, length).astype(np.float32)
    ours = log_mel(samples, model.preprocessor_config)
    theirs = get_logmel(mx.array(samples), model.preprocessor_config)
    assert ours.shape == theirs.shape
    assert float(mx.max(mx.abs(ours - theirs))) < 1e-4
