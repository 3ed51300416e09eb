"""The fast encoder forward against parakeet-mlx's own, on tiny random and trained checkpoints.

Tolerance: outputs are compared with an absolute 1e-4 (ATOL). Every encoder layer ends in a
LayerNorm, so outputs are O(1) (|x| < 6 here); the fast path sums the same products in other
orders (one QKV matmul, addmm, folded BatchNorm, shifted multiply-adds for the convolutions),
which in float32 (eps 1.2e-7) moves results by ~1e-6 per layer. Measured differences are
1e-5 or less; a wrong mask, position or fold moves them by 1e-2 or more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from parakeet_mlx.utils import from_pretrained

from conftest import TRAINED_MODEL
from parakeet_server.domain import BlockSchedule, Transcript, TranscriptionOptions
from parakeet_server.engine import fast_encoder
from parakeet_server.engine.model import ParakeetEngine
from parakeet_server.engine.streaming import StreamingSession

ATOL = 1e-4


def _load(path: Path) -> Any:
    """A checkpoint as the server loads it, with every weight the fast path folds or splits
    made non-trivial: a freshly initialised model has BatchNorm statistics 0 and 1 and
    position biases 0, which would hide a wrong fold or a swapped bias."""
    model = from_pretrained(str(path), dtype=mx.float32)
    keys = iter(mx.random.split(mx.random.key(11), 6 * len(model.encoder.layers)))
    for layer in model.encoder.layers:
        bn, attn = layer.conv.batch_norm, layer.self_attn
        d = bn.running_mean.shape[0]
        bn.running_mean = 0.3 * mx.random.normal((d,), key=next(keys))
        bn.running_var = mx.random.uniform(0.5, 2.0, (d,), key=next(keys))
        bn.weight = 1.0 + 0.2 * mx.random.normal((d,), key=next(keys))
        bn.bias = 0.2 * mx.random.normal((d,), key=next(keys))
        attn.pos_bias_u = 0.3 * mx.random.normal(attn.pos_bias_u.shape, key=next(keys))
        attn.pos_bias_v = 0.3 * mx.random.normal(attn.pos_bias_v.shape, key=next(keys))
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[str, Any]:
    """Stock models (nothing installed) of every kind, and the trained tiny CTC model."""
    loaded = {kind: _load(path) for kind, path in checkpoints.items()}
    loaded["trained"] = _load(TRAINED_MODEL)
    return loaded


def _mel(model: Any, batch: int, frames: int, seed: int) -> mx.array:
    shape = (batch, frames, model.preprocessor_config.features)
    return mx.random.normal(shape, key=mx.random.key(seed))


def _max_diff(a: mx.array, b: mx.array) -> float:
    assert a.shape == b.shape
    return float(mx.max(mx.abs(a - b)))


# One lane is the path GPUs take; two split every module over two CPU streams.
LANES = [1, 2]


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("kind", ["tdt", "rnnt", "ctc", "trained"])
@pytest.mark.parametrize("frames", [9, 201, 733])
def test_fast_encoder_equals_the_stock_encoder_at_batch_one(
    models: dict[str, Any], kind: str, frames: int, lanes: int
) -> None:
    model = models[kind]
    mel = _mel(model, 1, frames, seed=frames)
    reference, reference_lengths = model.encoder(mel)
    fast = fast_encoder.FastEncoder(model.encoder, lanes=lanes)
    out, lengths = fast(mel)
    assert lengths.tolist() == reference_lengths.tolist()
    assert _max_diff(out, reference) < ATOL


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("kind", ["tdt", "trained"])
def test_fast_encoder_equals_the_stock_encoder_on_an_equal_length_batch(
    models: dict[str, Any], kind: str, lanes: int
) -> None:
    model = models[kind]
    mel = _mel(model, 3, 311, seed=7)
    reference, _ = model.encoder(mel)
    out, _ = fast_encoder.FastEncoder(model.encoder, lanes=lanes)(mel)
    assert _max_diff(out, reference) < ATOL


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("kind", ["tdt", "trained"])
def test_a_padded_batch_gives_each_item_what_it_gets_alone(
    models: dict[str, Any], kind: str, lanes: int
) -> None:
    """Padding may not leak into real frames through the subsampling convolutions, the
    attention keys or the depthwise convolution. (The stock module ignores lengths, so the
    reference is the stock encoder on each item alone.)"""
    model = models[kind]
    lengths = [401, 250, 97, 33]
    items = [_mel(model, 1, n, seed=20 + i) for i, n in enumerate(lengths)]
    longest = max(lengths)
    # Padding with noise, not zeros: the fast path must mask what it is given.
    batch = mx.concatenate(
        [mx.concatenate([m, _mel(model, 1, longest - m.shape[1], 99)], axis=1) for m in items]
    )
    fast = fast_encoder.FastEncoder(model.encoder, lanes=lanes)
    out, out_lengths = fast(batch, mx.array(lengths))
    for index, item in enumerate(items):
        alone, alone_lengths = model.encoder(item)
        frames = int(alone_lengths[0])
        assert int(out_lengths[index]) == frames
        assert _max_diff(out[index : index + 1, :frames], alone) < ATOL


def test_install_swaps_the_forward_of_this_instance_only_and_uninstall_restores(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, other = _load(checkpoints["tdt"]), _load(checkpoints["tdt"])
    mel = _mel(model, 1, 150, seed=3)
    reference, _ = model.encoder(mel)
    fast = fast_encoder.install(model)
    assert fast is not None
    assert fast_encoder.fast_encoder_of(model) is fast
    assert fast_encoder.fast_encoder_of(other) is None
    assert fast_encoder.install(model) is fast  # idempotent
    assert _max_diff(model.encoder(mel)[0], reference) < ATOL
    # The stock modules read the same weights (Q, K, V are views into the fused matrix).
    stock_class = type(model.encoder).__mro__[1]
    assert _max_diff(stock_class.__call__(model.encoder, mel)[0], reference) == 0.0
    fast_encoder.uninstall(model)
    assert fast_encoder.fast_encoder_of(model) is None
    monkeypatch.setenv(fast_encoder.ENV_VAR, "stock")
    assert fast_encoder.install(model) is None


def _stream(model: Any, settings: BlockSchedule, audio: np.ndarray) -> tuple[list[Any], Any]:
    """Runs a stream in uneven pieces; returns each step's encoder output and the session."""
    session = StreamingSession(model, settings)
    outputs: list[np.ndarray] = []
    encode = session._encode

    def recording(start: int, end: int, ahead: int) -> mx.array:
        x = encode(start, end, ahead)
        outputs.append(np.array(x))
        return x

    session._encode = recording  # type: ignore[method-assign]
    rng = np.random.default_rng(8)
    position = 0
    while position < audio.size:
        size = int(rng.integers(300, 6000))
        session.accept(audio[position : position + size])
        position += size
        while session.pending_blocks():
            session.step()
    session.finish()
    return outputs, session


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("kind", ["tdt", "trained"])
def test_streaming_steps_equal_the_stock_streaming_path(
    checkpoints: dict[str, Path], kind: str, lanes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block by block with cached keys/values and conv context (which the small left
    context makes the caches trim), the fast layer step gives the stock step's outputs."""
    monkeypatch.setenv(fast_encoder.LANES_ENV_VAR, str(lanes))
    path = TRAINED_MODEL if kind == "trained" else checkpoints[kind]
    stock, fast = _load(path), _load(path)
    assert fast_encoder.install(fast) is not None
    settings = BlockSchedule(block_frames=6, lookahead_frames=3, left_context_frames=20)
    audio = np.random.default_rng(9).normal(0, 0.1, 16000 * 5 + 333).astype(np.float32)
    stock_outputs, stock_session = _stream(stock, settings, audio)
    fast_outputs, fast_session = _stream(fast, settings, audio)
    assert len(stock_outputs) == len(fast_outputs) >= 10  # 60+ frames: the caches trim
    for expected, got in zip(stock_outputs, fast_outputs, strict=True):
        assert expected.shape == got.shape
        assert float(np.abs(expected - got).max()) < ATOL
    assert [t.id for t in fast_session.tokens] == [t.id for t in stock_session.tokens]


@pytest.mark.parametrize("lanes", LANES)
def test_a_batch_of_streams_with_different_caches_equals_each_stream_alone(
    models: dict[str, Any], lanes: int
) -> None:
    """Streams batched into one layer step, with key/value caches of different lengths (one
    empty) and different numbers of new frames, each get what they get stepped alone."""
    model = models["tdt"]
    fast = fast_encoder.FastEncoder(model.encoder, lanes=lanes)
    layer = model.encoder.layers[1]
    w = fast.weights_of(layer)
    d, heads = model.encoder_config.d_model, w.heads
    c = w.conv_context
    past_lengths, step_lengths = [12, 0, 5], [7, 4, 7]
    rng = [mx.random.key(40 + i) for i in range(12)]
    keys = [
        mx.random.normal((heads, p, d // heads), key=rng[i]) if p else None
        for i, p in enumerate(past_lengths)
    ]
    values = [
        mx.random.normal((heads, p, d // heads), key=rng[3 + i]) if p else None
        for i, p in enumerate(past_lengths)
    ]
    convs = [mx.random.normal((1, c, d), key=rng[6 + i]) for i in range(3)]
    convs[1] = mx.zeros((1, c, d))  # a stream's first step has no conv context
    xs = [mx.random.normal((1, s, d), key=rng[9 + i]) for i, s in enumerate(step_lengths)]

    key_mask, frame_mask = fast_encoder.batch_masks(past_lengths, step_lengths, mx.float32)
    # Caches as the lanes keep them: each lane's heads and channels.
    lane_keys = [None if k is None else fast_encoder.split_heads(w, k, 0) for k in keys]
    lane_values = [None if v is None else fast_encoder.split_heads(w, v, 0) for v in values]
    past_keys, past_values = fast_encoder.stack_past(lane_keys, lane_values)
    most = max(step_lengths)
    x = mx.concatenate([mx.pad(x, [(0, 0), (0, most - x.shape[1]), (0, 0)]) for x in xs])
    batched = fast_encoder.layer_step(
        w,
        x,
        fast.relative_positions(w, max(past_lengths), most),
        past_keys=past_keys,
        past_values=past_values,
        key_mask=key_mask,
        frame_mask=frame_mask,
        conv_left=fast_encoder.split_channels(w, mx.concatenate(convs)),
        lanes=fast.lanes(),
    )
    for i, (p, s) in enumerate(zip(past_lengths, step_lengths, strict=True)):
        alone = fast_encoder.layer_step(
            w,
            xs[i],
            fast.relative_positions(w, p, s),
            past_keys=_with_batch_axis(lane_keys[i]),
            past_values=_with_batch_axis(lane_values[i]),
            conv_left=fast_encoder.split_channels(w, convs[i]),
            lanes=fast.lanes(),
        )
        assert all(_max_diff(copy, batched.x) == 0.0 for copy in batched.outputs)
        assert _max_diff(batched.x[i : i + 1, :s], alone.x) < ATOL
        batched_keys = fast_encoder.join_heads(batched.keys, 1)
        assert (
            _max_diff(batched_keys[i : i + 1, :, :s], fast_encoder.join_heads(alone.keys, 1)) < ATOL
        )
        batched_conv = mx.concatenate(list(batched.conv_input), axis=-1)
        assert (
            _max_diff(batched_conv[i : i + 1, :s], mx.concatenate(list(alone.conv_input), axis=-1))
            < ATOL
        )


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A sentence of the trained model's vocabulary, spoken by a held-out voice."""
    import soundfile as sf
    import soxr

    from audio_samples import speak

    path = speak(
        "check the map before we drive north and open the door",
        tmp_path_factory.mktemp("fast") / "speech.wav",
        voice="en-gb+f2",
        speed=175,
    )
    samples, rate = sf.read(path, dtype="float32")
    return np.asarray(soxr.resample(samples, rate, 16000), dtype=np.float32)


def _same_transcript(got: Transcript, expected: Transcript) -> None:
    """Equal words, tokens and times; confidences equal to float tolerance (they are
    entropies of the same logits, which differ in their last bits)."""
    assert got.text == expected.text
    assert got.token_ids == expected.token_ids
    assert len(got.segments) == len(expected.segments)
    for a, b in zip(got.segments, expected.segments, strict=True):
        assert (a.text, a.start, a.end) == (b.text, b.start, b.end)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert [(w.text, w.start, w.end) for w in a.words] == [
            (w.text, w.start, w.end) for w in b.words
        ]
        assert [w.confidence for w in a.words] == pytest.approx(
            [w.confidence for w in b.words], abs=1e-5
        )


def test_trained_model_transcripts_are_unchanged(
    speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = ParakeetEngine.load(str(TRAINED_MODEL))
    monkeypatch.setenv(fast_encoder.ENV_VAR, "stock")
    stock = ParakeetEngine.load(str(TRAINED_MODEL))
    assert fast_encoder.fast_encoder_of(fast._model) is not None
    assert fast_encoder.fast_encoder_of(stock._model) is None
    options = TranscriptionOptions(word_timestamps=True)
    expected = stock.transcribe(speech, options)
    assert "north" in expected.text  # the trained model hears the words
    _same_transcript(fast.transcribe(speech, options), expected)
    settings = BlockSchedule(block_frames=16, lookahead_frames=4, left_context_frames=64)
    streamed = []
    for engine in (stock, fast):
        session = engine.open_stream(settings)
        for start in range(0, speech.size, 4000):
            engine.stream_block(session, speech[start : start + 4000])
        transcript, _ = engine.stream_finish(session, np.zeros(0, np.float32), options)
        streamed.append(transcript)
    _same_transcript(streamed[1], streamed[0])


def test_the_fast_encoder_runs_on_another_thread_than_the_one_that_installed_it(
    checkpoints: dict[str, Path],
) -> None:
    """The server loads on one thread and runs on another: weights derived at install must
    be evaluated there (a lazy array is bound to its thread's stream), and lanes are made
    per thread."""
    import threading

    from parakeet_server.engine.runtime import release_thread_resources

    model = _load(checkpoints["tdt"])
    mel = _mel(model, 1, 301, seed=12)
    reference, _ = model.encoder(mel)
    mx.eval(reference)
    assert fast_encoder.install(model) is not None
    results: list[Any] = []

    def run() -> None:
        try:
            out, _ = model.encoder(mel)
            results.append(float(mx.max(mx.abs(out - reference))))
        except Exception as error:  # reported below
            results.append(error)
        finally:
            release_thread_resources()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert isinstance(results[0], float), results[0]
    assert results[0] < ATOL


def _with_batch_axis(cache: fast_encoder.Groups | None) -> fast_encoder.Groups | None:
    return None if cache is None else tuple(group[None] for group in cache)
