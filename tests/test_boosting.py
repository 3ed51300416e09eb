"""Phrase boosting: the context graph alone (no model), then the engine's decoders with it.

The graph's scores are what beam search ranks hypotheses by; its gains are what greedy decoding
adds; its state is an int carried across blocks, chunks and calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile

from audio_samples import convert, speak
from conftest import TRAINED_MODEL
from parakeet_server.domain import (
    MAX_PHRASES,
    BlockSchedule,
    ChunkingConfig,
    DecodingMethod,
    Phrase,
    TranscriptionOptions,
    phrase_problem,
)
from parakeet_server.engine.boosting import (
    NATS_PER_BOOST,
    ROOT,
    ContextGraph,
    Spelling,
    Unspellable,
    compile_phrases,
)
from parakeet_server.engine.decoding import DecoderState, ctc_path
from parakeet_server.engine.model import ParakeetEngine


def walk(graph: ContextGraph, tokens: Sequence[int], state: int = ROOT) -> tuple[int, list[float]]:
    """The state after `tokens` and the score each added."""
    deltas = []
    for token in tokens:
        state, delta = graph.advance(state, token)
        deltas.append(delta)
    return state, deltas


# --- the graph --------------------------------------------------------------------------------


def test_each_token_of_a_phrase_gains_its_score_and_a_whole_phrase_keeps_it() -> None:
    graph = ContextGraph([((1, 2, 3), 2.0)])
    state, deltas = walk(graph, [1, 2, 3])
    assert deltas == [2.0, 2.0, 2.0]
    assert graph.settle(state) == 0.0  # complete: nothing to give back at the end
    state, deltas = walk(graph, [9, 4], state)
    assert (state, deltas) == (ROOT, [0.0, 0.0])  # moving on keeps the phrase's 6


def test_a_broken_match_gives_back_what_it_gained() -> None:
    graph = ContextGraph([((1, 2, 3), 2.0)])
    state, deltas = walk(graph, [1, 2])
    assert deltas == [2.0, 2.0]
    assert graph.settle(state) == -4.0  # a hypothesis ending here gives it back
    after, (delta,) = walk(graph, [9], state)
    assert (after, delta) == (ROOT, -4.0)
    # Broken by the phrase's own first token: the new match's gain, less the old one's.
    restarted, (delta,) = walk(graph, [1], state)
    assert graph.advance(ROOT, 1)[0] == restarted
    assert delta == 2.0 - 4.0


def test_a_broken_match_falls_back_to_the_longest_suffix_that_starts_a_phrase() -> None:
    graph = ContextGraph([((1, 2, 3), 1.0), ((2, 4), 1.0)])
    state, deltas = walk(graph, [1, 2, 4])
    # "1 2" broke off, but its "2" began "2 4", now whole: its 2.0 is all that is kept.
    assert sum(deltas) == 2.0
    assert graph.settle(state) == 0.0
    assert walk(graph, [2, 4])[0] == state


def test_overlapping_phrases_keep_the_shorter_ones_credit_and_share_the_larger_boost() -> None:
    graph = ContextGraph([((1,), 1.0), ((1, 2), 1.0)])  # "new" and "new york"
    assert sum(walk(graph, [1, 9])[1]) == 1.0  # "new" was said: kept when "york" does not follow
    assert sum(walk(graph, [1, 2, 9])[1]) == 2.0
    shared = ContextGraph([((1, 2), 1.0), ((1, 3), 3.0)])
    assert walk(shared, [1, 2])[1] == [3.0, 1.0]  # the shared first token gains the most
    assert sum(walk(shared, [1, 9])[1]) == 0.0


def test_greedy_gains_start_every_phrase_and_the_deepest_match_wins() -> None:
    graph = ContextGraph([((1, 2), 1.0), ((5,), 2.0), ((2, 7), 0.5)])

    def gains(state: int) -> dict[int, float]:
        ids, values = graph.gains(state)
        return dict(zip(ids.tolist(), values.tolist(), strict=True))

    assert gains(ROOT) == {1: 1.0, 5: 2.0, 2: 0.5}
    after_one = graph.next_state(ROOT, 1)
    assert gains(after_one) == {1: 1.0, 5: 2.0, 2: 1.0}  # "2" continues "1 2" rather than start
    # A completed phrase with nothing after it gains what the root does (and shares its work).
    after_five = graph.next_state(ROOT, 5)
    assert graph.gain_state(after_five) == ROOT
    assert gains(after_five) == gains(ROOT)


def test_state_carried_across_calls_gives_what_one_call_gives() -> None:
    graph = ContextGraph([((1, 2, 3), 1.0), ((3, 4), 1.0)])
    tokens = [7, 1, 2, 3, 4, 1, 2]
    whole = graph.replay(ROOT, tokens)
    for cut in range(len(tokens) + 1):
        assert graph.replay(graph.replay(ROOT, tokens[:cut]), tokens[cut:]) == whole


BLANK = 6


def _frames(*rows: dict[int, float]) -> np.ndarray:
    """Log-probabilities (T, 7): each row's given tokens, everything else far below."""
    out = np.full((len(rows), BLANK + 1), -20.0, dtype=np.float32)
    for frame, row in enumerate(rows):
        for token, value in row.items():
            out[frame, token] = value
    return out


# Token 1 is heard clearly; then token 2 is a close second to blank (a word half heard).
HEARD = _frames(
    {BLANK: -2.0, 1: -0.1}, {BLANK: -0.1, 1: -3.0}, {BLANK: -0.2, 2: -1.0}, {BLANK: -0.1}
)


def test_ctc_greedy_takes_a_boosted_continuation_only_after_its_start() -> None:
    pair = ContextGraph([((1, 2), 1.5)])
    assert _collapse(ctc_path(HEARD.copy(), BLANK, DecoderState(), None)) == [1]
    assert _collapse(ctc_path(HEARD.copy(), BLANK, DecoderState(), pair)) == [1, 2]
    # "2" alone is no phrase start: without "1" before it, it gains nothing.
    alone = HEARD.copy()
    alone[0] = _frames({BLANK: -0.1})[0]
    assert _collapse(ctc_path(alone, BLANK, DecoderState(), pair)) == []


def test_ctc_greedy_carries_the_phrase_state_across_blocks() -> None:
    pair = ContextGraph([((1, 2), 1.5)])
    whole = ctc_path(HEARD.copy(), BLANK, DecoderState(), pair)
    for cut in range(1, len(HEARD)):
        state = DecoderState()
        first = ctc_path(HEARD[:cut].copy(), BLANK, state, pair)
        second = ctc_path(HEARD[cut:].copy(), BLANK, state, pair)
        assert np.concatenate([first, second]).tolist() == whole.tolist(), cut


def test_ctc_greedy_a_repeated_frame_gains_nothing() -> None:
    """A repeat of the previous frame's token emits nothing new: no gain lifts it over blank."""
    word = ContextGraph([((5,), 2.0)])
    frames = _frames({5: -0.1, BLANK: -3.0}, {BLANK: -0.1, 5: -1.0})
    assert ctc_path(frames, BLANK, DecoderState(), word).tolist() == [5, BLANK]


def test_ctc_greedy_is_the_best_log_probability_plus_gain_at_every_frame() -> None:
    """ctc_path skips frames and batches work; on random frames and random phrases it chooses
    what the plain rule chooses frame by frame, whatever the block boundaries."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        size = int(rng.integers(3, 10))
        frames = rng.normal(0, 2, (int(rng.integers(1, 40)), size + 1)).astype(np.float32)
        frames[:, size] += rng.normal(2, 2)  # blank (the last token) mostly wins
        paths = [
            (tuple(rng.integers(0, size, int(rng.integers(1, 4))).tolist()), rng.uniform(0.1, 3))
            for _ in range(int(rng.integers(1, 5)))
        ]
        graph = ContextGraph(paths)
        wanted, context, previous = [], ROOT, -1
        for row in frames:
            ids, gains = graph.gains(context)
            scores = row.copy()
            scores[ids] += np.where(ids == previous, 0.0, gains)
            token = int(scores.argmax())
            if token != size and token != previous:
                context = graph.next_state(context, token)
            wanted.append(token)
            previous = token
        cut = int(rng.integers(0, len(frames) + 1))
        state = DecoderState()
        got = [
            *ctc_path(frames[:cut].copy(), size, state, graph).tolist(),
            *ctc_path(frames[cut:].copy(), size, state, graph).tolist(),
        ]
        assert (got, state.context) == (wanted, context)


def _collapse(path: np.ndarray) -> list[int]:
    out: list[int] = []
    previous = -1
    for token in path.tolist():
        if token != BLANK and token != previous:
            out.append(token)
        previous = token
    return out


# --- spelling phrases in a vocabulary ---------------------------------------------------------

PIECES = ["▁new", "▁york", "▁ne", "w", "▁y", "ork", "▁New", "▁York", "▁k", "u", "be", "r"]


def test_a_phrase_is_spelled_in_the_fewest_pieces_word_by_word() -> None:
    spelling = Spelling.of(PIECES)
    assert spelling.cased
    index = {piece: i for i, piece in enumerate(PIECES)}
    spellings = spelling.spellings("new york")
    assert (index["▁new"], index["▁york"]) in spellings
    assert (index["▁ne"], index["w"], index["▁york"]) not in spellings
    assert spelling.spellings("kuber") == [tuple(index[p] for p in ("▁k", "u", "be", "r"))]


def test_a_cased_vocabulary_also_gets_the_lower_case_and_capitalised_forms() -> None:
    spelling = Spelling.of(PIECES)
    index = {piece: i for i, piece in enumerate(PIECES)}
    spellings = set(spelling.spellings("new York"))
    assert {
        (index["▁new"], index["▁York"]),  # as written
        (index["▁new"], index["▁york"]),  # lower-cased
        (index["▁New"], index["▁York"]),  # capitalised / title case
    } <= spellings
    lower = Spelling.of([p.lower() for p in PIECES])
    assert not lower.cased
    assert lower.forms("New York") == ["new york"]


def test_a_phrase_the_vocabulary_cannot_write_is_refused_by_its_index() -> None:
    spelling = Spelling.of(PIECES)
    with pytest.raises(Unspellable, match=r"options\.phrases\[1\] 'new jersey'"):
        compile_phrases([Phrase("york", 5), Phrase("new jersey", 5)], spelling)
    graph = compile_phrases([Phrase("york", 4)], spelling)
    ids, gains = graph.gains(ROOT)
    assert set(gains.tolist()) == {4 * NATS_PER_BOOST}
    assert {PIECES[i] for i in ids.tolist()} == {"▁york", "▁York"}


@pytest.mark.parametrize(
    ("phrases", "message"),
    [
        ((Phrase("", 5),), r"x\[0\]\.text is empty"),
        ((Phrase("  ", 5),), r"x\[0\]\.text is empty"),
        ((Phrase("ok", 5), Phrase("a" * 101, 5)), r"x\[1\]\.text is 101 characters"),
        ((Phrase("ok", 0.0),), r"x\[0\]\.boost \('ok'\) must be greater than 0"),
        ((Phrase("ok", -1.0),), r"x\[0\]\.boost"),
        ((Phrase("ok", float("nan")),), r"x\[0\]\.boost .* not nan"),
        ((Phrase("ok", 20.5),), r"at most 20"),
        ((Phrase("ok", 5),) * (MAX_PHRASES + 1), r"x has 1001 phrases; at most 1000"),
    ],
)
def test_phrases_out_of_limits_are_named(phrases: tuple[Phrase, ...], message: str) -> None:
    problem = phrase_problem(phrases, "x")
    assert problem is not None
    assert __import__("re").search(message, problem), problem


def test_phrases_within_limits_pass() -> None:
    edge = (Phrase("a" * 100, 20.0), Phrase("b", 1e-3))
    assert phrase_problem(edge * (MAX_PHRASES // 2), "x") is None


# --- the engine's decoders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(11).normal(0, 0.1, 16000 * 4).astype(np.float32)


@pytest.fixture(scope="module")
def engines(checkpoints: dict[str, Path]) -> dict[str, ParakeetEngine]:
    return {kind: ParakeetEngine.load(str(path)) for kind, path in checkpoints.items()}


def _tokens(result: Any) -> list[tuple[int, float, float]]:
    return [(t.id, t.start, t.duration) for t in result]


@pytest.fixture(scope="module")
def speech(speech_dir: Path) -> np.ndarray:
    samples, _ = soundfile.read(speech_dir / "speech.wav", dtype="float32")
    return np.asarray(samples)


@pytest.mark.parametrize("kind", ["tdt", "rnnt", "ctc", "trained ctc"])
def test_a_boost_that_changes_no_choice_gives_parakeet_mlx_own_result(
    engines: dict[str, ParakeetEngine], kind: str, noise: np.ndarray, speech: np.ndarray
) -> None:
    """The boosted decoders are parakeet-mlx's greedy decoding plus gains: with a gain too
    small to change any choice, the same tokens, times and confidences (on the trained model,
    whose confident frames make the confidences tell its CTC frames apart)."""
    word, noise = "zq", noise[:32000]  # the random RNN-T says a token every step: 2 s do
    if kind == "trained ctc":
        engine, noise, word = ParakeetEngine.load(str(TRAINED_MODEL)), speech, "zulu"
    else:
        engine = engines[kind]
    options = TranscriptionOptions(word_timestamps=True)
    plain = engine.transcribe(noise, options)
    faint = engine.transcribe(
        noise, TranscriptionOptions(word_timestamps=True, phrases=(Phrase(word, 1e-4),))
    )
    assert plain.token_ids
    assert faint.token_ids == plain.token_ids
    for a, b in zip(plain.segments, faint.segments, strict=True):
        assert (a.text, a.start, a.end) == (b.text, b.start, b.end)
        for x, y in zip(a.words, b.words, strict=True):
            assert (x.text, x.start, x.end) == (y.text, y.start, y.end)
            assert x.confidence == pytest.approx(y.confidence, abs=1e-5)


@pytest.mark.parametrize(
    ("kind", "decoding"),
    [
        ("tdt", DecodingMethod.GREEDY),
        ("rnnt", DecodingMethod.GREEDY),
        ("ctc", DecodingMethod.GREEDY),
        ("tdt", DecodingMethod.BEAM),
        ("rnnt", DecodingMethod.BEAM),
    ],
)
def test_a_strong_boost_brings_the_phrase_out_of_a_random_model(
    engines: dict[str, ParakeetEngine], kind: str, decoding: DecodingMethod, noise: np.ndarray
) -> None:
    engine = engines[kind]
    options = TranscriptionOptions(decoding=decoding, beam_size=2)
    samples = noise[:16000] if kind == "rnnt" else noise[:32000]
    # Greedy: a one-piece word; beam: three pieces ("▁b e d"), which only a hypothesis that
    # completes them keeps the credit of.
    word = "bed" if decoding is DecodingMethod.BEAM else "ab"
    plain = engine.transcribe(samples, options).text.split()
    boosted = engine.transcribe(
        samples, TranscriptionOptions(decoding=decoding, beam_size=2, phrases=(Phrase(word, 20),))
    ).text.split()
    assert word not in plain
    assert word in boosted, boosted


def test_each_chunk_of_a_long_recording_starts_where_its_predecessor_left_the_phrases(
    checkpoints: dict[str, Path], noise: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks overlap: a chunk starts in the state the chunk before had reached at the time
    the new one starts, within a batch of chunks and from one batch to the next."""
    chunking = ChunkingConfig(chunk_seconds=1.5, overlap_seconds=0.5, batch_size=2)
    engine = ParakeetEngine.load(str(checkpoints["tdt"]), chunking=chunking)
    phrases = (Phrase("bed", 20), Phrase("a bad cab", 20))
    graph = engine.context_graph(phrases)
    assert graph is not None
    calls: list[tuple[int, list[tuple[int, float]]]] = []
    real = engine._decode_boosted

    def spy(features: Any, length: int, config: Any, graph: Any, context: int = ROOT) -> Any:
        tokens = real(features, length, config, graph, context)
        calls.append((context, [(t.id, t.start) for t in tokens]))  # before the joiner moves them
        return tokens

    monkeypatch.setattr(engine, "_decode_boosted", spy)
    engine.transcribe(noise, TranscriptionOptions(phrases=phrases))
    starts = [c.start / 16000 for c in engine_chunks(engine, noise)]
    assert len(calls) == len(starts) >= 4
    assert calls[0][0] == ROOT
    for (context, tokens), (following, _), start, after in zip(
        calls, calls[1:], starts, starts[1:], strict=False
    ):
        assert following == graph.replay(context, [i for i, t in tokens if t < after - start])
    assert any(context != ROOT for context, _ in calls[1:])  # the check above had work to do


def engine_chunks(engine: ParakeetEngine, samples: np.ndarray) -> list[Any]:
    from parakeet_server.engine.chunking import plan_chunks

    chunking = engine._chunking
    return plan_chunks(
        len(samples), int(chunking.chunk_seconds * 16000), int(chunking.overlap_seconds * 16000)
    )


@pytest.mark.parametrize("kind", ["tdt", "ctc"])
def test_a_stream_boosts_its_phrases_and_carries_their_state_across_blocks(
    engines: dict[str, ParakeetEngine], kind: str, noise: np.ndarray
) -> None:
    engine = engines[kind]
    phrases = (Phrase("ab", 20), Phrase("bed", 20))
    graph = engine.context_graph(phrases)
    assert graph is not None
    session = engine.open_stream(BlockSchedule(block_frames=4, lookahead_frames=2), phrases)
    for piece in np.array_split(noise, 10):
        engine.stream_block(session, piece)
    transcript, _ = engine.stream_finish(session, np.zeros(0, np.float32), TranscriptionOptions())
    assert {"ab", "bed"} & set(transcript.text.split()), transcript.text
    # The state after the stream is the one all its tokens lead to from the start.
    assert session._state.context == graph.replay(ROOT, transcript.token_ids) != ROOT


@pytest.fixture(scope="module")
def trained() -> ParakeetEngine:
    return ParakeetEngine.load(str(TRAINED_MODEL))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A held-out voice in which the trained model hears "walk how" for "walk home"."""
    folder = tmp_path_factory.mktemp("home")
    return _speech(folder, "the children began the long walk home after the music", "en-us+m7", 195)


def test_streams_stepped_together_each_keep_their_own_phrases(
    trained: ParakeetEngine, home: np.ndarray, tmp_path: Path
) -> None:
    """step_streams runs several streams' blocks as one batch; each stream still decodes with
    its own phrases and state (trained model, held-out voices, words it mishears)."""
    engine = trained
    other = _speech(tmp_path, "four eight one six two", "en-us+m3", 155)
    schedule = BlockSchedule(block_frames=32, lookahead_frames=16, left_context_frames=64)
    streams = [
        (other, (Phrase("eight", 8),)),
        (home, ()),
        (home, (Phrase("home", 8),)),
    ]

    def run(group: list[tuple[np.ndarray, tuple[Phrase, ...]]]) -> list[str]:
        sessions = [engine.open_stream(schedule, phrases) for _, phrases in group]
        engine.stream_blocks([(s, audio) for s, (audio, _) in zip(sessions, group, strict=True)])
        while any(s.pending_blocks() for s in sessions):
            engine.stream_blocks([(s, np.zeros(0, np.float32)) for s in sessions])
        finished = [
            engine.stream_finish(s, np.zeros(0, np.float32), TranscriptionOptions())
            for s in sessions
        ]
        return [transcript.text for transcript, _ in finished]

    together = run(streams)
    assert together == [run([one])[0] for one in streams]
    assert "eight" in together[0].split()
    assert "home" not in together[1].split()  # misheard unboosted...
    assert "home" in together[2].split()  # ... and heard boosted, in the same batch


def test_short_recordings_batched_together_are_boosted_as_each_alone(
    trained: ParakeetEngine, home: np.ndarray
) -> None:
    """transcribe_batch groups recordings by options (phrases included) into one encoder pass;
    each group decodes with its own phrases."""
    engine = trained
    boosted = TranscriptionOptions(phrases=(Phrase("home", 8),))
    requests = [(home, boosted), (home[:-1600], boosted), (home, TranscriptionOptions())]
    together = engine.transcribe_batch(requests)
    assert [t.text for t in together] == [engine.transcribe(*r).text for r in requests]
    assert ["home" in t.text.split() for t in together] == [True, True, False]


def _speech(folder: Path, text: str, voice: str, speed: int) -> np.ndarray:
    spoken = speak(text, folder / f"{voice}-{speed}.wav", voice, speed)
    samples, _ = soundfile.read(
        convert(spoken, folder / f"{voice}-{speed}-16k.wav", rate=16000), dtype="float32"
    )
    return np.asarray(samples)


@pytest.mark.parametrize("kind", ["tdt", "ctc"])
def test_a_bfloat16_model_boosts_too(
    checkpoints: dict[str, Path], kind: str, noise: np.ndarray
) -> None:
    """bfloat16 (the GPU's default) has no numpy twin: the decoders cast before reading."""
    engine = ParakeetEngine.load(str(checkpoints[kind]), dtype="bfloat16")
    phrases = (Phrase("ab", 20),)
    assert "ab" in engine.transcribe(noise[:32000], TranscriptionOptions(phrases=phrases)).text
    session = engine.open_stream(BlockSchedule(block_frames=4, lookahead_frames=2), phrases)
    engine.stream_block(session, noise[:32000])
    transcript, _ = engine.stream_finish(session, np.zeros(0, np.float32), TranscriptionOptions())
    assert "ab" in transcript.text.split()


def test_greedy_decoding_runs_the_prediction_network_once_per_emitted_token() -> None:
    """A blank changes nothing the prediction network reads: it runs for the start and after
    each token, not at every step (the decoder's cost on long blank runs). A stand-in model
    whose joint passes the frames' scores through says tokens 1, 2, 0 at frames 3, 10, 17 of
    20, blank elsewhere, each lasting one frame."""
    import mlx.core as mx

    from parakeet_server.engine.decoding import DecoderState, transducer_greedy

    vocabulary, durations, frames = ["a", "b", "c"], [0, 1, 2], 20
    blank = len(vocabulary)
    said = {3: 1, 10: 2, 17: 0}
    scores = np.full((1, frames, blank + 1 + len(durations)), -5.0, np.float32)
    scores[0, :, blank] = 0.0
    for frame, token in said.items():
        scores[0, frame, token] = 5.0
    scores[0, :, blank + 1 + durations.index(1)] = 5.0
    calls: list[Any] = []

    def prediction_network(last: Any, hidden: Any) -> Any:
        calls.append(None if last is None else int(last.item()))
        zeros = mx.zeros((1, 1, 2))
        return zeros, (zeros, zeros)

    width = scores.shape[-1]
    joint = SimpleNamespace(enc=lambda x: x, pred=lambda out: mx.zeros((1, 1, width)), joint_net=[])
    model = SimpleNamespace(
        vocabulary=vocabulary,
        durations=durations,
        time_ratio=0.08,
        max_symbols=None,
        joint=joint,
        decoder=prediction_network,
    )
    tokens = transducer_greedy(model, mx.array(scores), 0, DecoderState(), True)
    assert [(t.id, round(t.start / 0.08)) for t in tokens] == [(1, 3), (2, 10), (0, 17)]
    assert calls == [None, 1, 2, 0]  # at the start, then after each token: 4 runs, not 20


@pytest.mark.parametrize("kind", ["tdt", "rnnt"])
def test_unary_greedy_decoding_gives_parakeet_mlx_own_tokens(
    engines: dict[str, ParakeetEngine],
    kind: str,
    noise: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Transcribe decodes greedy transducers with the server's decoder (one prediction
    network run per token): parakeet-mlx's own `generate` must give the same tokens, times and
    confidences, alone and in a batch of recordings of different lengths."""
    from parakeet_mlx import DecodingConfig, Greedy

    engine = engines[kind]
    model = engine._model
    clips = [noise[:32000], noise[:24000]]
    wanted = []
    for clip in clips:
        (result,) = model.generate(
            engine._mels([clip])[0], decoding_config=DecodingConfig(Greedy())
        )
        wanted.append([(t.id, t.start, t.duration, t.confidence) for t in result.tokens])
    assert all(wanted)
    config = DecodingConfig(Greedy())
    from parakeet_server.engine import decoding

    ours: list[int] = []
    real = decoding.transducer_greedy

    def counting(*args: Any, **kwargs: Any) -> Any:
        ours.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "transducer_greedy", counting)
    alone = [engine._generate([clip], config)[0] for clip in clips]
    together = engine._generate_padded(clips, config, None)
    assert len(ours) == 2 * len(clips)  # the server's decoder, not parakeet-mlx's
    for got in (alone, together):
        for tokens, expected in zip(got, wanted, strict=True):
            assert [t.id for t in tokens] == [e[0] for e in expected]
            for t, (_, start, duration, confidence) in zip(tokens, expected, strict=True):
                assert (t.start, t.duration) == pytest.approx((start, duration))
                assert t.confidence == pytest.approx(confidence, abs=1e-5)
