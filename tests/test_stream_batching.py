"""Live streams batched through the encoder give what each gives alone (issue 13).

In process, on the trained checkpoint and real speech: three streams start at different
offsets and arrive in different message sizes; each round, every stream with new audio goes to
`stream_blocks` together, so the streams with a block ready share the encoder call. Their
tokens, times and texts must equal those of each stream run alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import soundfile as sf

from audio_samples import convert, speak
from conftest import TRAINED_MODEL
from parakeet_server.domain import BlockSchedule, Transcript, TranscriptionOptions
from parakeet_server.engine import streaming
from parakeet_server.engine.model import ParakeetEngine

SENTENCES = (
    "alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike",
    "seven three nine one four two eight six five zero one two three four",
    "kilo lima mike november oscar papa quebec romeo sierra tango uniform victor",
)
MESSAGE_SAMPLES = (1600, 2700, 4000)  # 100, ~170 and 250 ms messages
# The streams start 0, 0.7 and 1.3 s after the first, and all run in real time.
START_SAMPLES = (0, 11200, 20800)
ROUND_SAMPLES = 800  # 50 ms of time per round
BUSY_ROUNDS = 8  # the model takes 400 ms a step
SCHEDULE = BlockSchedule(block_frames=12, lookahead_frames=6, left_context_frames=40)
OPTIONS = TranscriptionOptions(word_timestamps=True)


@pytest.fixture(scope="module")
def engine() -> ParakeetEngine:
    return ParakeetEngine.load(str(TRAINED_MODEL))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    root = tmp_path_factory.mktemp("batching")
    audio = []
    for index, sentence in enumerate(SENTENCES):
        path = convert(
            speak(sentence, root / f"{index}.wav"), root / f"{index}-16k.wav", rate=16000
        )
        samples, _ = sf.read(path, dtype="float32")
        audio.append(samples)
    return audio


# Batched matmuls sum in another order: confidences agree to ~1e-7 (measured); a padded frame
# leaking into the real ones moved a word's confidence by 0.018.
CONFIDENCE_TOLERANCE = 1e-4


def _confidences(transcript: Transcript) -> list[float]:
    return [
        c for s in transcript.segments for c in (s.confidence, *(w.confidence for w in s.words))
    ]


def _same(got: Transcript, wanted: Transcript) -> None:
    assert _result(got) == _result(wanted)
    differences = [a - b for a, b in zip(_confidences(got), _confidences(wanted), strict=True)]
    assert max(map(abs, differences), default=0.0) < CONFIDENCE_TOLERANCE


def _result(transcript: Transcript) -> tuple[Any, ...]:
    words = [
        (w.text, round(w.start, 4), round(w.end, 4)) for s in transcript.segments for w in s.words
    ]
    return transcript.text, transcript.token_ids, words


def _alone(
    engine: ParakeetEngine, audio: np.ndarray, size: int, schedule: BlockSchedule = SCHEDULE
) -> Transcript:
    session = engine.open_stream(schedule)
    for offset in range(0, len(audio), size):
        engine.stream_block(session, audio[offset : offset + size])
    transcript, _ = engine.stream_finish(session, np.zeros(0, np.float32), OPTIONS)
    return transcript


def test_streams_batched_together_give_what_each_gives_alone(
    engine: ParakeetEngine, recordings: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = [
        _alone(engine, audio, size) for audio, size in zip(recordings, MESSAGE_SAMPLES, strict=True)
    ]
    assert all(transcript.text for transcript in alone), alone

    batch_sizes: list[int] = []
    real_step = streaming.step_streams

    def counting(sessions: list[Any]) -> list[Any]:
        batch_sizes.append(len(sessions))
        return real_step(sessions)

    monkeypatch.setattr(streaming, "step_streams", counting)
    sessions = [engine.open_stream(SCHEDULE) for _ in recordings]
    sent = [0] * len(recordings)
    waiting: list[list[np.ndarray]] = [[] for _ in recordings]
    for now in range(0, 10_000_000, ROUND_SAMPLES):  # time, in samples since the first start
        for index, (audio, size) in enumerate(zip(recordings, MESSAGE_SAMPLES, strict=True)):
            spoken = now - START_SAMPLES[index]  # how much of its audio has been spoken
            # A message leaves once all of its samples are spoken (or the recording ends).
            if sent[index] < len(audio) and spoken >= min(sent[index] + size, len(audio)):
                waiting[index].append(audio[sent[index] : sent[index] + size])
                sent[index] += size
        done = all(n >= len(audio) for n, audio in zip(sent, recordings, strict=True))
        # The model is busy for BUSY_ROUNDS at a time: what arrived meanwhile goes together,
        # one block of each stream per call, as the server's scheduler sends it.
        if now % (BUSY_ROUNDS * ROUND_SAMPLES) == 0 or done:
            blocks = [
                (session, np.concatenate(pieces) if pieces else np.zeros(0, np.float32))
                for session, pieces in zip(sessions, waiting, strict=True)
                if pieces or session.pending_blocks()
            ]
            waiting = [[] for _ in recordings]
            if blocks:
                engine.stream_blocks(blocks)
        if done and not any(session.pending_blocks() for session in sessions):
            break
    together = [
        engine.stream_finish(session, np.zeros(0, np.float32), OPTIONS)[0] for session in sessions
    ]
    # The batches really held several streams (else this compares alone with alone).
    assert max(batch_sizes) == len(recordings), batch_sizes
    assert sum(size > 1 for size in batch_sizes) >= 5, batch_sizes
    for got, wanted in zip(together, alone, strict=True):
        _same(got, wanted)


def test_the_same_streams_step_after_step_attend_to_the_caches_their_last_step_left(
    engine: ParakeetEngine, recordings: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every stream's left context is full, a batch of the same streams reads the keys
    and values its last step kept as they are (no restacking); results stay each alone's,
    also as the batch shrinks when the shorter recordings end."""
    schedule = BlockSchedule(block_frames=12, lookahead_frames=6, left_context_frames=24)
    alone = [_alone(engine, audio, len(audio), schedule) for audio in recordings]
    reused: list[bool] = []
    real = streaming._stacked

    def spying(caches: list[Any]) -> Any:
        found = real(caches)
        reused.append(found[0] is not None)
        return found

    monkeypatch.setattr(streaming, "_stacked", spying)
    sessions = [engine.open_stream(schedule) for _ in recordings]
    blocks = list(zip(sessions, recordings, strict=True))
    rounds = 0
    while blocks:
        engine.stream_blocks(blocks)
        rounds += 1
        if rounds == 6:  # one stream steps alone in between: its caches move, not the others'
            engine.stream_block(sessions[0], np.zeros(0, np.float32))
        blocks = [(s, np.zeros(0, np.float32)) for s in sessions if s.pending_blocks()]
    together = [
        engine.stream_finish(session, np.zeros(0, np.float32), OPTIONS)[0] for session in sessions
    ]
    assert sum(reused) >= len(reused) // 2, reused  # the path under test really ran
    assert not all(reused)  # and so did restacking (the first steps, the shrinking batch)
    for got, wanted in zip(together, alone, strict=True):
        _same(got, wanted)


def test_a_batch_of_streams_is_one_encoder_pass_per_layer(
    engine: ParakeetEngine, recordings: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_layer = streaming._batched_layer

    def counting(*args: Any) -> Any:
        x = args[3]  # the batch's x: (B, S, d), or each lane's copy of it
        calls.append((x[0] if isinstance(x, tuple) else x).shape[0])
        return real_layer(*args)

    monkeypatch.setattr(streaming, "_batched_layer", counting)
    sessions = [engine.open_stream(SCHEDULE) for _ in recordings]
    need = engine.samples_for_frames(SCHEDULE.block_frames + SCHEDULE.lookahead_frames)
    results = engine.stream_blocks(
        [(session, audio[:need]) for session, audio in zip(sessions, recordings, strict=True)]
    )
    layers = len(calls)
    assert layers > 0
    assert calls == [len(recordings)] * layers  # every layer once, all streams in it
    assert all(result.committed_seconds > 0 for result in results)
    for session in sessions:
        engine.release(session)


def test_short_recordings_batched_together_give_what_each_gives_alone(
    engine: ParakeetEngine, recordings: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-shot requests of different lengths share one padded encoder pass (issue 13)."""
    plain = TranscriptionOptions()
    requests = [(recordings[0], OPTIONS), (recordings[1], OPTIONS), (recordings[2], plain)]
    alone = [engine.transcribe(samples, options) for samples, options in requests]
    sizes: list[int] = []
    real = engine._generate_padded

    def counting(pieces: list[np.ndarray], config: Any, graph: Any) -> list[list[Any]]:
        sizes.append(len(pieces))
        return real(pieces, config, graph)

    monkeypatch.setattr(engine, "_generate_padded", counting)
    together = engine.transcribe_batch(requests)
    assert sorted(sizes) == [1, 2]  # grouped by options: the two alike went together
    for got, wanted in zip(together, alone, strict=True):
        _same(got, wanted)
