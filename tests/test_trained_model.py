"""The trained tiny CTC checkpoint through a real server: spoken words come back as those words.

Speech is synthesised with espeak-ng voice variants and rates the model never heard in training
(see tools/train_tiny/README.md), from the model's closed vocabulary.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import RunningServer, start_server, stream, transcribe
from parakeet.v1 import transcription_pb2 as pb

MODEL = Path(__file__).resolve().parent / "models" / "tiny-ctc-espeak"
RATE = 16000

# The checkpoint is made by tools/train_tiny (see its README); until one is committed these wait.
pytestmark = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(), reason="no trained checkpoint in tests/models yet"
)

SENTENCES = [
    "seven three nine zero five",
    "alfa bravo charlie delta echo",
    "the children began the long walk home after the music",
    "check the map before we drive north",
    "victor whiskey xray yankee zulu",
    "my father found an old boat near the river",
    "the quick green bird saw a large fish",
    "open the door and turn off the light",
]
# Held-out voices and rates (tools/train_tiny/data.py: HELDOUT_VARIANTS, HELDOUT_SPEEDS).
VOICES = [("en-us+m3", 155), ("en-gb+f2", 175), ("en-us+m7", 195), ("en-gb-x-rp+f5", 135)]

# To be set a little above what the committed checkpoint measures on these clips.
UNARY_WER = 0.15
MODES = {
    "streaming": pb.FINALIZATION_MODE_STREAMING,
    "full_context": pb.FINALIZATION_MODE_FULL_CONTEXT,
    "auto": pb.FINALIZATION_MODE_AUTO,
}


# How espeak-ng is told to say the vocabulary words it would not say as meant.
SPOKEN = {"xray": "x-ray", "alfa": "alpha", "juliett": "juliet"}


def synthesise(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32."""
    spoken = " ".join(SPOKEN.get(word, word) for word in text.split())
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", spoken],
        check=True,
        capture_output=True,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return np.asarray(soxr.resample(samples, rate, RATE), dtype=np.float32)


def wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def words(text: str) -> str:
    return " ".join(text.lower().replace(",", " ").replace(".", " ").split())


@pytest.fixture(scope="module")
def clips() -> list[tuple[str, np.ndarray]]:
    """Each sentence in one held-out voice: (reference words, 16 kHz samples)."""
    out = []
    for i, sentence in enumerate(SENTENCES):
        voice, speed = VOICES[i % len(VOICES)]
        out.append((sentence, synthesise(sentence, voice, speed)))
    return out


@pytest.fixture(scope="module")
def trained_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(MODEL, tmp_path_factory.mktemp("logs"), "--transcript-cache-bytes", "0")
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def unary_wer(trained_server: RunningServer, clips: list[tuple[str, np.ndarray]]) -> float:
    stub = trained_server.stub()
    hyps = [words(transcribe(stub, wav_bytes(samples)).transcript.text) for _, samples in clips]
    return float(jiwer.wer([ref for ref, _ in clips], hyps))


def test_transcribe_returns_the_spoken_words(unary_wer: float) -> None:
    assert unary_wer <= UNARY_WER


@pytest.mark.parametrize("mode", sorted(MODES))
def test_streaming_keeps_the_accuracy_of_unary(
    mode: str,
    trained_server: RunningServer,
    clips: list[tuple[str, np.ndarray]],
    unary_wer: float,
) -> None:
    stub = trained_server.stub()
    hyps = []
    for _, samples in clips:
        responses = stream(stub, pcm16(samples), chunk_bytes=6400, mode=MODES[mode])
        assert responses[-1].is_final
        hyps.append(words(responses[-1].transcript.text))
    streamed = float(jiwer.wer([ref for ref, _ in clips], hyps))
    assert streamed <= unary_wer + 0.02, (mode, hyps)


@pytest.fixture(scope="module")
def five_minutes() -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """About 5 minutes of random vocabulary sentences in held-out voices, with short pauses."""
    vocabulary = (MODEL / "words.txt").read_text().split()
    rng = np.random.default_rng(7)
    sentences: list[str] = []
    speeches: list[np.ndarray] = []
    pieces: list[np.ndarray] = []
    total = 0
    while total < 300 * RATE:
        sentence = " ".join(rng.choice(vocabulary, int(rng.integers(6, 16))))
        voice, speed = VOICES[len(sentences) % len(VOICES)]
        speech = synthesise(sentence, voice, speed)
        pause = rng.normal(0, 0.002, int(rng.uniform(0.3, 0.9) * RATE)).astype(np.float32)
        sentences.append(sentence)
        speeches.append(speech)
        pieces += [speech, pause]
        total += speech.size + pause.size
    return sentences, speeches, np.concatenate(pieces)


def test_a_long_recording_comes_back_with_every_word_once(
    trained_server: RunningServer, five_minutes: tuple[list[str], list[np.ndarray], np.ndarray]
) -> None:
    sentences, speeches, samples = five_minutes
    stub = trained_server.stub()
    # What the model hears in each sentence alone: the chunked whole must say the same words.
    alone = " ".join(
        words(transcribe(stub, wav_bytes(speech)).transcript.text) for speech in speeches
    )
    request = pb.TranscribeLongRequest(audio=wav_bytes(samples))
    final = list(stub.TranscribeLong(request, timeout=300))[-1]
    assert final.metrics.chunk_count >= 10
    long = words(final.transcript.text)
    reference = " ".join(sentences)
    seams = jiwer.process_words(alone, long)
    print(
        f"long vs alone: {seams.insertions} ins {seams.deletions} del "
        f"{seams.substitutions} sub; WER vs reference long {jiwer.wer(reference, long):.3f} "
        f"alone {jiwer.wer(reference, alone):.3f}"
    )
    assert seams.insertions == seams.deletions == 0
    assert jiwer.wer(reference, long) <= jiwer.wer(reference, alone) + 0.01
