"""Endpointing (issue 14): a stream cut into utterances at the pauses in its speech.

The endpointer and the utterance bookkeeping on their own (fast, no server), then the real
server on the trained tiny CTC checkpoint with espeak-ng sentences separated by pauses.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import jiwer
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration

from conftest import details
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.audio.vad import SpeechDetector
from parakeet_server.domain import BlockResult, TimedToken, Transcript, TranscriptionOptions
from parakeet_server.engine.results import sentences_to_transcript, tokens_to_transcript
from parakeet_server.pipeline.endpointing import (
    LEAD_SECONDS,
    Endpointer,
    EndpointRules,
    EndReason,
    SpeechBegan,
    UtteranceEnded,
)
from parakeet_server.pipeline.utterances import SpeechEvent, Utterances
from parakeet_server.testing.launcher import RunningServer
from scrape import delta, scrape
from test_trained_model import pcm16, synthesise, wav_bytes, words

RATE = 16000
FRAME = 0.08


def tok(word: str, frame: int, frames: int = 1) -> TimedToken:
    """A word token at encoder frame `frame` (80 ms each)."""
    return TimedToken(hash(word) % 1000, f" {word}", frame * FRAME, (frame + frames) * FRAME, 0.9)


def ends(events: list[SpeechBegan | UtteranceEnded]) -> list[UtteranceEnded]:
    return [e for e in events if isinstance(e, UtteranceEnded)]


# --- the endpointer -----------------------------------------------------------------------------


def test_a_pause_of_trailing_silence_after_the_last_word_ends_the_utterance() -> None:
    endpointer = Endpointer(EndpointRules(trailing_silence=0.8))
    # Step 1 commits frames [0, 16) with two words, looks ahead to frame 24: 0.72 s of pause.
    events = endpointer.advance([tok("one", 6), tok("two", 14)], (), 1.28, 1.92)
    assert events == [SpeechBegan(6 * FRAME)]
    # Step 2: no word, decoded to frame 40: the pause after "two" (ends at frame 15) is 2 s.
    (ended,) = endpointer.advance([], (), 2.56, 3.2)
    assert isinstance(ended, UtteranceEnded)
    assert [t.text for t in ended.tokens] == [" one", " two"]
    assert ended.reason is EndReason.SILENCE
    assert ended.closed_at == 3.2
    assert ended.audio_start == 0.0
    assert ended.audio_end == pytest.approx((15 * FRAME + 3.2) / 2)  # inside the pause
    assert ended.index == 0


def test_a_pause_just_short_of_trailing_silence_keeps_the_utterance_open() -> None:
    endpointer = Endpointer(EndpointRules(trailing_silence=0.8))
    assert endpointer.advance([tok("one", 4)], (), 0.32, 0.4) == [SpeechBegan(4 * FRAME)]
    # Decoded to frame 14: the pause after frame 5 is 9 frames (0.72 s) < 0.8 s.
    assert endpointer.advance([], (), 0.32, 14 * FRAME) == []
    # Exactly 10 frames, 0.8 s (0.7999999999999999 in floats): closed all the same.
    assert len(ends(endpointer.advance([], (), 0.32, 15 * FRAME))) == 1


def test_the_drafts_first_word_bounds_the_pause() -> None:
    endpointer = Endpointer(EndpointRules(trailing_silence=0.8))
    endpointer.advance([tok("one", 2)], (), 0.16, 0.32)
    # The draft already hears the next word 0.4 s after "one": no end yet, however far decoded.
    assert endpointer.advance([], [tok("two", 8)], 1.28, 5.0) == []
    assert endpointer.draft == [tok("two", 8)]


def test_a_long_gap_between_two_committed_words_cuts_between_them() -> None:
    endpointer = Endpointer(EndpointRules(trailing_silence=0.8))
    events = endpointer.advance([tok("one", 1), tok("two", 3), tok("three", 20)], (), 2.0, 2.0)
    assert events[0] == SpeechBegan(FRAME)
    ended = events[1]
    assert isinstance(ended, UtteranceEnded)
    assert [t.text for t in ended.tokens] == [" one", " two"]
    assert ended.audio_end == pytest.approx((4 + 20) / 2 * FRAME)
    assert events[2] == SpeechBegan(20 * FRAME)
    assert [t.text for t in endpointer.open_tokens] == [" three"]
    assert endpointer.audio_start == ended.audio_end  # the next utterance's audio starts there


def test_max_utterance_cuts_between_words_never_inside_one() -> None:
    endpointer = Endpointer(EndpointRules(trailing_silence=0.8, max_utterance=1.1))
    tokens = [tok("a", 0), tok("b", 4), tok("c", 8), tok("d", 12, 1)]
    # A piece that continues "d" (no leading space) may run past the limit: same word.
    tokens.append(TimedToken(7, "ing", 13 * FRAME, 14 * FRAME, 0.9))
    tokens.append(tok("e", 15))
    events = endpointer.advance(tokens, (), 1.28, 1.28)
    (ended,) = ends(events)
    assert ended.reason is EndReason.MAX_UTTERANCE
    assert [t.text for t in ended.tokens] == [" a", " b", " c", " d", "ing"]
    assert [t.text for t in endpointer.open_tokens] == [" e"]


def test_words_the_detector_heard_no_speech_in_are_blanks() -> None:
    """Noise: the model may hear words in it; the voice-activity detector vetoes them."""
    speech = [(1.0, 2.0)]

    def heard(start: float, end: float) -> bool:
        return any(start < b and end > a for a, b in speech)

    endpointer = Endpointer(EndpointRules(trailing_silence=0.8), heard)
    assert endpointer.advance([tok("noise", 2), tok("hum", 6)], (), 0.64, 0.64) == []
    assert endpointer.advance([tok("one", 14)], [tok("buzz", 22)], 1.28, 1.92) == [
        SpeechBegan(14 * FRAME)
    ]
    # A word heard in the noise after the speech holds nothing open.
    (ended,) = ends(endpointer.advance([tok("buzz", 30)], [], 3.0, 3.5))
    assert [t.text for t in ended.tokens] == [" one"]
    assert endpointer.draft == []


def test_nothing_but_silence_or_noise_has_no_utterance_and_keeps_little_audio() -> None:
    endpointer = Endpointer(EndpointRules(), lambda start, end: False)
    for step in range(1, 100):
        assert (
            endpointer.advance([tok("noise", step * 16)], (), step * 1.28, step * 1.28 + 0.64) == []
        )
    assert endpointer.finish(99 * 1.28) is None
    # The next utterance's audio starts at most LEAD_SECONDS before the committed frames.
    assert endpointer.audio_start == pytest.approx(99 * 1.28 - LEAD_SECONDS)


def test_finish_closes_the_open_utterance_at_the_end_of_the_stream() -> None:
    endpointer = Endpointer(EndpointRules())
    endpointer.advance([tok("one", 2)], (), 0.32, 0.32)
    ended = endpointer.finish(0.5)
    assert ended is not None
    assert (ended.reason, ended.audio_end, ended.index) == (EndReason.END_OF_STREAM, 0.5, 0)
    assert endpointer.finish(0.5) is None


# --- an utterance's transcript from tokens ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        TranscriptionOptions(),
        TranscriptionOptions(word_timestamps=True, max_words=3),
        TranscriptionOptions(max_silence_seconds=0.3, max_segment_seconds=1.0),
    ],
)
def test_tokens_to_transcript_equals_parakeet_mlxs_sentences(
    options: TranscriptionOptions,
) -> None:
    """The server builds an utterance's Transcript without MLX; the engine, with parakeet-mlx."""
    from parakeet_mlx.alignment import AlignedToken, SentenceConfig, tokens_to_sentences

    rng = random.Random(4)
    pieces = [" hello", " world", "ing", ".", ",", " a", "!", " b", "?", " c."]
    for _ in range(30):
        tokens, start = [], 0.0
        for _ in range(rng.randint(1, 25)):
            start += rng.choice((0.0, 0.08, 0.16, 0.4))
            duration = rng.choice((0.08, 0.16))
            text = rng.choice(pieces)
            tokens.append(
                TimedToken(rng.randint(0, 99), text, start, start + duration, rng.random())
            )
        aligned = [
            AlignedToken(t.id, t.text, t.start, t.end - t.start, t.confidence) for t in tokens
        ]
        config = SentenceConfig(
            max_words=options.max_words,
            silence_gap=options.max_silence_seconds,
            max_duration=options.max_segment_seconds,
        )
        expected = sentences_to_transcript(
            tokens_to_sentences(aligned, config), options.word_timestamps
        )
        got = tokens_to_transcript(tokens, options)
        assert got == Transcript(
            text=expected.text,
            segments=tuple(
                s.__class__(**{**s.__dict__, "confidence": pytest.approx(s.confidence)})
                for s in expected.segments
            ),
            word_count=expected.word_count,
            token_ids=expected.token_ids,
        )


# --- utterances of a stream, with a fake model ---------------------------------------------------


def _block(
    tokens: list[TimedToken], committed: float, draft: tuple[TimedToken, ...] = ()
) -> BlockResult:
    return BlockResult(
        next_block_at=0,
        committed_seconds=committed,
        committed_text="",
        whole_text="",
        tokens=tuple(tokens),
        draft=tuple(draft),
        decoded_seconds=committed + 0.64,
    )


def test_full_context_passes_hear_exactly_each_utterances_audio_and_text_only_grows() -> None:
    heard: list[np.ndarray] = []

    async def transcribe(audio: np.ndarray) -> Transcript:
        heard.append(audio)
        return tokens_to_transcript([tok(f"full{len(heard)}", 1)], TranscriptionOptions())

    async def scenario() -> list[tuple[str, str]]:
        utterances = Utterances(
            EndpointRules(), TranscriptionOptions(), RATE, 1280, full_context=lambda s: True
        )
        utterances.add_audio(np.arange(10 * RATE, dtype=np.float32))  # sample i has value i
        texts = []
        for tokens, committed, draft in [
            ([tok("one", 2)], 1.28, (tok("two", 8),)),  # a 0.4 s pause: one utterance
            ([tok("two", 8)], 2.56, ()),  # closed: 2.48 s of pause after "two"
            ([], 3.84, ()),  # silence: the next utterance's audio starts 1 s before 3.84
            ([tok("three", 60)], 5.12, (tok("four", 70),)),
        ]:
            await utterances.advance(_block(tokens, committed, draft), transcribe)
            texts.append(utterances.texts(interim=True))
        last = await utterances.finish(_block([], 5.0), 5.7, transcribe)
        assert [h.event for h in last] == [SpeechEvent.END_OF_UTTERANCE]
        assert last[0].utterance is not None
        assert last[0].utterance.reason is EndReason.END_OF_STREAM
        texts.append(utterances.texts(interim=True))
        assert utterances.transcript().text == "full1 full2"
        return texts

    texts = asyncio.run(scenario())
    # Full context: the open utterance's words stay draft until its pass is done.
    assert texts == [
        ("", "one two"),
        ("full1", ""),
        ("full1", ""),
        ("full1", " three four"),
        ("full1 full2", ""),
    ]
    first, second = heard
    # The first utterance: from the stream's start to the middle of its pause.
    cut = round((9 * FRAME + 3.2) / 2 * RATE)
    np.testing.assert_array_equal(first, np.arange(cut, dtype=np.float32))
    # The second: from LEAD_SECONDS before the committed audio it began after, to the end.
    start = round((3.84 - LEAD_SECONDS) * RATE)
    np.testing.assert_array_equal(second, np.arange(start, round(5.7 * RATE), dtype=np.float32))


def test_single_utterance_stops_after_the_first() -> None:
    async def scenario() -> tuple[list[SpeechEvent], tuple[str, str]]:
        utterances = Utterances(
            EndpointRules(single_utterance=True), TranscriptionOptions(), RATE, 1280, None
        )
        happenings = await utterances.advance(
            _block([tok("one", 2), tok("two", 30), tok("three", 50)], 5.0), _never
        )
        return [h.event for h in happenings], utterances.texts(interim=True)

    events, texts = asyncio.run(scenario())
    assert events == [SpeechEvent.SPEECH_BEGIN, SpeechEvent.END_OF_SINGLE_UTTERANCE]
    assert texts == ("one", "")


async def _never(audio: np.ndarray) -> Transcript:
    raise AssertionError("streaming text needs no full-context pass")


# --- the voice-activity detector ----------------------------------------------------------------


def test_silero_hears_speech_in_speech_and_none_in_loud_noise() -> None:
    speech = synthesise("alfa bravo charlie delta echo", "en-us+m3", 155)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 3 * RATE).astype(np.float32)
    detector = SpeechDetector()
    try:
        detector.accept(np.concatenate([noise, speech]))
        detector.finish()
        assert detector.heard_seconds >= (noise.size + speech.size) / RATE
        assert not detector.heard_speech(0.0, 2.9)
        assert detector.heard_speech(3.0, 3.0 + speech.size / RATE)
        detector.forget_before(2.0)
        assert detector.heard_speech(3.0, 3.0 + speech.size / RATE)
    finally:
        detector.close()


# --- through the server, on the trained checkpoint ----------------------------------------------

SENTENCES = [
    ("alfa bravo charlie delta echo", "en-us+m3", 155),
    ("seven three nine zero five", "en-gb+f2", 175),
    ("victor whiskey xray yankee zulu", "en-us+m7", 195),
]
PAUSE_SECONDS = 2.0
NOISE_FLOOR = 0.001  # white noise under everything, ~-60 dBFS: the model hears words in it


def _speech_end(samples: np.ndarray) -> float:
    return float(np.flatnonzero(np.abs(samples) > 0.01)[-1] + 1) / RATE


@pytest.fixture(scope="module")
def dictation() -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """Three sentences, each followed by a pause, over a faint noise floor: (audio, the
    sentences alone, where each one's speech ends in the audio)."""
    clips = [synthesise(text, voice, speed) for text, voice, speed in SENTENCES]
    pieces, speech_ends, at = [], [], 0
    for clip in clips:
        speech_ends.append(at / RATE + _speech_end(clip))
        pause = np.zeros(int(PAUSE_SECONDS * RATE), np.float32)
        pieces += [clip, pause]
        at += clip.size + pause.size
    audio = np.concatenate(pieces)
    audio += np.random.default_rng(1).normal(0, NOISE_FLOOR, audio.size).astype(np.float32)
    return audio, clips, speech_ends


def _config(
    mode: pb.FinalizationMode = pb.FINALIZATION_MODE_AUTO,
    interim: bool = True,
    **endpointing: object,
) -> pb.StreamingConfig:
    return pb.StreamingConfig(
        format=pb.AudioFormat(
            encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=RATE, channel_count=1
        ),
        interim_results=interim,
        finalization_mode=mode,
        endpointing=pb.EndpointingConfig(**endpointing),  # type: ignore[arg-type]
    )


def _stream_held_open(
    server: RunningServer, config: pb.StreamingConfig, pcm: bytes, *, utterances: int
) -> tuple[list[pb.StreamingTranscribeResponse], bool]:
    """Streams `pcm` unpaced but half-closes only after `utterances` utterances have come back
    (or 60 s): (every response, whether they all came while the stream was open)."""
    enough = threading.Event()

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(config=config)
        for start in range(0, len(pcm), 6400):
            yield pb.StreamingTranscribeRequest(audio=pcm[start : start + 6400])
        if utterances:
            enough.wait(60)

    responses = []
    for response in server.stub().StreamingTranscribe(requests(), timeout=120):
        responses.append(response)
        if sum(r.HasField("utterance") for r in responses) >= utterances:
            enough.set()
    open_when_done = enough.is_set()
    enough.set()
    return responses, open_when_done


def _seconds(value: Duration) -> float:
    return value.ToNanoseconds() / 1e9


@pytest.mark.parametrize("mode", [pb.FINALIZATION_MODE_STREAMING, pb.FINALIZATION_MODE_AUTO])
def test_three_sentences_come_back_as_three_utterances_while_the_stream_is_open(
    trained_server: RunningServer,
    dictation: tuple[np.ndarray, list[np.ndarray], list[float]],
    mode: pb.FinalizationMode,
) -> None:
    audio, clips, speech_ends = dictation
    stub = trained_server.stub()
    alone = [
        words(stub.Transcribe(pb.TranscribeRequest(audio=wav_bytes(c))).transcript.text)
        for c in clips
    ]
    info = stub.GetServerInfo(pb.GetServerInfoRequest())
    step = _seconds(info.stream_block)
    before = scrape(trained_server)
    responses, while_open = _stream_held_open(
        trained_server, _config(mode), pcm16(audio), utterances=3
    )
    after = scrape(trained_server)
    assert while_open, "the utterances came only after the half-close"
    closing = [r for r in responses if r.HasField("utterance")]
    assert [r.speech_event for r in closing] == [pb.SPEECH_EVENT_END_OF_UTTERANCE] * 3
    assert [r.utterance.index for r in closing] == [0, 1, 2]
    assert [r.utterance.end_reason for r in closing] == [pb.Utterance.END_REASON_SILENCE] * 3
    begins = [r for r in responses if r.speech_event == pb.SPEECH_EVENT_SPEECH_BEGIN]
    assert len(begins) == 3
    texts = [words(r.utterance.transcript.text) for r in closing]
    for text, reference in zip(texts, alone, strict=True):
        assert jiwer.process_words(reference, text).wer * len(reference.split()) <= 1, (
            texts,
            alone,
        )
    # No word lost or said twice at a boundary: each utterance's words lie inside its own
    # sentence's time, and the utterances hold the stream's words once, in order.
    for response, speech_end, clip in zip(closing, speech_ends, clips, strict=True):
        utterance = response.utterance
        segments = utterance.transcript.segments
        start = speech_end - _speech_end(clip)
        assert _seconds(segments[0].start_time) >= start - 0.5
        assert _seconds(segments[-1].end_time) <= speech_end + 0.5
        closed_at = _seconds(utterance.closed_at)
        # Audio time, not wall time: the end came within trailing_silence + one step.
        assert speech_end < closed_at <= speech_end + 0.8 + step + 1e-6, (closed_at, speech_end)
    print(
        "END_OF_UTTERANCE this much audio after the speech ended:",
        [
            round(_seconds(r.utterance.closed_at) - end, 2)
            for r, end in zip(closing, speech_ends, strict=True)
        ],
    )
    final = responses[-1]
    assert final.is_final
    assert not final.HasField("utterance")
    assert words(final.transcript.text) == " ".join(texts)
    assert final.finalized_text == " ".join(r.utterance.transcript.text for r in closing)
    finalized = [r.finalized_text for r in responses]
    assert all(b.startswith(a) for a, b in itertools.pairwise(finalized))
    assert delta(before, after, "parakeet_stream_utterances_total", reason="silence") == 3
    assert delta(before, after, "parakeet_stream_end_of_speech_seconds_count") == 3


def test_single_utterance_ends_the_stream_after_the_first_sentence(
    trained_server: RunningServer, dictation: tuple[np.ndarray, list[np.ndarray], list[float]]
) -> None:
    audio, _, speech_ends = dictation
    # Never half-closed: the server ends the call itself, however much audio follows.
    responses, _ = _stream_held_open(
        trained_server, _config(single_utterance=True), pcm16(audio), utterances=99
    )
    events = [r.speech_event for r in responses if r.speech_event]
    assert events == [pb.SPEECH_EVENT_SPEECH_BEGIN, pb.SPEECH_EVENT_END_OF_SINGLE_UTTERANCE]
    single, final = responses[-2:]
    assert single.speech_event == pb.SPEECH_EVENT_END_OF_SINGLE_UTTERANCE
    assert final.is_final
    assert final.transcript.text == single.utterance.transcript.text
    assert words(final.transcript.text)
    assert "seven" not in words(final.transcript.text)
    assert _seconds(single.utterance.closed_at) < speech_ends[1]


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_alone_has_no_utterance(trained_server: RunningServer, colour: str) -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, 6 * RATE)
    if colour == "pink":
        spectrum = np.fft.rfft(noise) / np.sqrt(np.arange(1, 3 * RATE + 2))
        noise = np.fft.irfft(spectrum, noise.size)
    noise = (noise / noise.std() * 0.05).astype(np.float32)
    responses, _ = _stream_held_open(trained_server, _config(), pcm16(noise), utterances=0)
    assert not [r for r in responses if r.speech_event or r.HasField("utterance")]
    assert responses[-1].is_final
    assert responses[-1].transcript.text == ""
    assert all(not r.finalized_text and not r.draft_text for r in responses)


def test_events_come_without_interim_results(
    trained_server: RunningServer, dictation: tuple[np.ndarray, list[np.ndarray], list[float]]
) -> None:
    audio, _, _ = dictation
    config = _config(pb.FINALIZATION_MODE_STREAMING, interim=False)
    responses, _ = _stream_held_open(trained_server, config, pcm16(audio), utterances=3)
    assert all(r.speech_event or r.is_final for r in responses)
    assert sum(r.HasField("utterance") for r in responses) == 3
    assert all(not r.draft_text for r in responses)


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


@pytest.mark.parametrize(
    ("field", "endpointing"),
    [
        ("trailing_silence", {"trailing_silence": _duration(0.1)}),
        ("trailing_silence", {"trailing_silence": _duration(11)}),
        ("trailing_silence", {"trailing_silence": _duration(-1)}),
        ("max_utterance", {"max_utterance": _duration(0.5)}),
        ("max_utterance", {"max_utterance": _duration(301)}),
    ],
)
def test_bad_endpointing_is_invalid_argument_and_the_server_keeps_serving(
    trained_server: RunningServer, field: str, endpointing: dict[str, Duration]
) -> None:
    stub = trained_server.stub()
    config = _config()
    for name, value in endpointing.items():
        getattr(config.endpointing, name).CopyFrom(value)
    pcm = pcm16(np.zeros(RATE // 2, np.float32))
    requests = [
        pb.StreamingTranscribeRequest(config=config),
        pb.StreamingTranscribeRequest(audio=pcm),
    ]
    with pytest.raises(grpc.RpcError) as error:
        list(stub.StreamingTranscribe(iter(requests), timeout=60))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"endpointing.{field}" in details(error.value)
    good = [pb.StreamingTranscribeRequest(config=_config()), requests[1]]
    assert list(stub.StreamingTranscribe(iter(good), timeout=60))[-1].is_final


# --- the clients ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dictation_wav(
    tmp_path_factory: pytest.TempPathFactory,
    dictation: tuple[np.ndarray, list[np.ndarray], list[float]],
) -> Path:
    path = tmp_path_factory.mktemp("dictation") / "dictation.wav"
    path.write_bytes(wav_bytes(dictation[0]))
    return path


def test_parakeet_client_prints_each_utterance_as_it_closes(
    trained_server: RunningServer, dictation_wav: Path
) -> None:
    command = [sys.executable, "-m", "parakeet_client", "--server", trained_server.address,
               "stream", str(dictation_wav), "--mode", "streaming"]  # fmt: skip
    lines = subprocess.run(
        [*command, "--endpointing"], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert len(lines) == 3
    assert words(lines[0]).startswith("alfa")
    single = subprocess.run(
        [*command, "--single-utterance"], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert single == lines[:1]


def test_the_renderer_prints_utterances_on_lines_of_their_own() -> None:
    from parakeet_client.stream import Renderer

    def closing(text: str, finalized: str) -> pb.StreamingTranscribeResponse:
        return pb.StreamingTranscribeResponse(
            finalized_text=finalized,
            speech_event=pb.SPEECH_EVENT_END_OF_UTTERANCE,
            utterance=pb.Utterance(transcript=pb.Transcript(text=text)),
        )

    out = io.StringIO()
    renderer = Renderer(out, interim=True, tty=False, utterances=True)
    renderer.update(pb.StreamingTranscribeResponse(draft_text="one tw"))
    renderer.utterance(closing("one two", "one two"))
    renderer.update(pb.StreamingTranscribeResponse(finalized_text="one two three", draft_text=" f"))
    renderer.finish(pb.StreamingTranscribeResponse(is_final=True, finalized_text="one two three"))
    assert out.getvalue() == "[draft] one tw\n[utterance] one two\n[draft] three f\n"
    terminal = io.StringIO()
    live = Renderer(terminal, tty=True, width=80, utterances=True)
    live.update(pb.StreamingTranscribeResponse(finalized_text="one", draft_text=" two"))
    live.utterance(closing("one two", "one two"))
    live.update(pb.StreamingTranscribeResponse(finalized_text="one two three"))
    assert terminal.getvalue().endswith("\r\x1b[Kone two\n\rthree\x1b[K")
