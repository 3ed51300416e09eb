"""Transcribe through a real server on a tiny generated checkpoint: formats, options, metrics."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer


def _seconds(duration: object) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]


def test_wav_is_transcribed_with_metrics(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    response = transcribe(stub, speech_wav)
    samples, rate = soundfile.read(__import__("io").BytesIO(speech_wav))
    metrics = response.metrics
    assert response.transcript.text.strip()
    assert response.transcript.segments
    assert metrics.audio_seconds == pytest.approx(len(samples) / rate, abs=1e-3)
    assert metrics.processing_seconds > 0
    assert metrics.real_time_factor == pytest.approx(
        metrics.processing_seconds / metrics.audio_seconds, rel=1e-6
    )
    assert metrics.word_count == len(response.transcript.text.split())
    assert metrics.words_per_second == pytest.approx(
        metrics.word_count / metrics.processing_seconds, rel=1e-6
    )
    assert metrics.milliseconds_per_word == pytest.approx(
        metrics.processing_seconds * 1000 / metrics.word_count, rel=1e-6
    )
    assert metrics.inference_seconds > 0
    assert not metrics.cache_hit
    assert re.fullmatch(r"[0-9a-f]{12}", response.request_id)


def test_perf_line_in_log_matches_response(
    server: RunningServer, stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    response = transcribe(stub, speech_wav)
    line = next(line for line in server.log().splitlines() if f"id={response.request_id}" in line)
    metrics = response.metrics
    match = re.search(
        r"PERF audio=([\d.]+)s words=(\d+) time=([\d.]+)s rtf=([\d.]+) wps=([\d.]+) "
        r"ms_per_word=([\d.]+)",
        line,
    )
    assert match, line
    audio, words, seconds, rtf, wps, ms_per_word = match.groups()
    assert float(audio) == pytest.approx(metrics.audio_seconds, abs=0.005)
    assert int(words) == metrics.word_count
    assert float(seconds) == pytest.approx(metrics.processing_seconds, abs=0.0005)
    assert float(rtf) == pytest.approx(metrics.real_time_factor, abs=0.0005)
    assert float(wps) == pytest.approx(metrics.words_per_second, abs=0.05)
    assert float(ms_per_word) == pytest.approx(metrics.milliseconds_per_word, abs=0.05)
    assert "status=OK" in line
    assert "rpc=Transcribe" in line


def test_same_audio_gives_same_transcript(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    first = transcribe(stub, speech_wav, word_timestamps=True)
    second = transcribe(stub, speech_wav, word_timestamps=True)
    assert first.transcript == second.transcript


@pytest.mark.parametrize("suffix", ["flac"])
def test_lossless_containers_equal_wav(
    stub: pb_grpc.TranscriptionServiceStub, speech_dir: Path, speech_wav: bytes, suffix: str
) -> None:
    expected = transcribe(stub, speech_wav).transcript
    got = transcribe(stub, (speech_dir / f"speech.{suffix}").read_bytes()).transcript
    assert got == expected


@pytest.mark.parametrize(
    "name",
    [
        "speech.ogg",
        "speech.opus",
        "speech.mp3",
        "speech.m4a",
        "speech_8000.wav",
        "speech_44100.wav",
        "speech_48000.wav",
        "speech_stereo.wav",
        "speech_stereo.m4a",
    ],
)
def test_every_container_rate_and_layout_is_transcribed(
    stub: pb_grpc.TranscriptionServiceStub, speech_dir: Path, speech_wav: bytes, name: str
) -> None:
    reference = transcribe(stub, speech_wav)
    response = transcribe(stub, (speech_dir / name).read_bytes())
    # Lossy codecs pad a few frames; resampled audio differs slightly, so random weights
    # give other tokens: the duration is what must survive decoding.
    assert response.metrics.audio_seconds == pytest.approx(
        reference.metrics.audio_seconds, abs=0.12
    )
    assert response.transcript.segments


@pytest.mark.parametrize(
    ("suffix", "encoding"),
    [
        ("s16le", pb.AudioFormat.ENCODING_LINEAR16),
        ("f32le", pb.AudioFormat.ENCODING_FLOAT32),
    ],
)
def test_raw_pcm_equals_the_same_samples_in_wav(
    stub: pb_grpc.TranscriptionServiceStub,
    speech_dir: Path,
    speech_wav: bytes,
    suffix: str,
    encoding: pb.AudioFormat.Encoding,
) -> None:
    expected = transcribe(stub, speech_wav).transcript
    raw = (speech_dir / f"speech.{suffix}").read_bytes()
    got = transcribe(stub, raw, encoding=encoding, sample_rate=16000, channels=1).transcript
    assert got == expected


def test_stereo_raw_pcm_with_identical_channels_equals_mono(
    stub: pb_grpc.TranscriptionServiceStub, speech_dir: Path
) -> None:
    mono = np.frombuffer((speech_dir / "speech.s16le").read_bytes(), dtype="<i2")
    stereo = np.repeat(mono, 2).tobytes()
    linear16 = pb.AudioFormat.ENCODING_LINEAR16
    expected = transcribe(stub, mono.tobytes(), encoding=linear16, sample_rate=16000)
    got = transcribe(stub, stereo, encoding=linear16, sample_rate=16000, channels=2)
    assert got.transcript == expected.transcript


def test_word_timestamps_only_when_asked(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    without = transcribe(stub, speech_wav)
    assert all(not segment.words for segment in without.transcript.segments)
    with_words = transcribe(stub, speech_wav, word_timestamps=True)
    words = [word for segment in with_words.transcript.segments for word in segment.words]
    assert [w.text for w in words] == with_words.transcript.text.split()
    assert len(words) == with_words.metrics.word_count
    starts = [_seconds(w.start_time) for w in words]
    assert starts == sorted(starts)
    for word in words:
        assert 0 <= _seconds(word.start_time) <= _seconds(word.end_time)
        assert _seconds(word.end_time) <= with_words.metrics.audio_seconds + 0.5
        assert 0 <= word.confidence <= 1
    for segment in with_words.transcript.segments:
        assert _seconds(segment.start_time) == _seconds(segment.words[0].start_time)
        assert _seconds(segment.end_time) == _seconds(segment.words[-1].end_time)


def test_segmentation_options_cut_segments(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    whole = transcribe(stub, speech_wav)
    limited = transcribe(
        stub,
        speech_wav,
        word_timestamps=True,
        segmentation=pb.SegmentationOptions(max_words=2),
    )
    assert limited.transcript.text == whole.transcript.text
    assert all(len(segment.words) <= 2 for segment in limited.transcript.segments)
    if whole.metrics.word_count > 2:
        assert len(limited.transcript.segments) > len(whole.transcript.segments)


def test_beam_search_runs_with_the_width_asked_for(
    stub: pb_grpc.TranscriptionServiceStub, speech_wav: bytes
) -> None:
    """Beam search exists for TDT and RNN-T models (parakeet-mlx's Beam; CTC refuses it). On
    this sentence the tiny random TDT checkpoint's greedy path is not the best one: a beam of 2
    finds another, a beam of 4 another still (a beam of 8 agrees with 4), and a beam of 1 is
    greedy decoding. So the method and the width both reach the decoder."""

    def text(beam_size: int | None = None) -> str:
        if beam_size is None:
            return transcribe(stub, speech_wav).transcript.text
        beam = pb.DECODING_METHOD_BEAM
        response = transcribe(stub, speech_wav, decoding_method=beam, beam_size=beam_size)
        return response.transcript.text

    greedy = text()
    assert text(1) == greedy
    assert text(2) != greedy
    assert text(4) not in (greedy, text(2))
    assert text(4) == text(4)  # and it is deterministic


def test_eight_concurrent_clients_get_identical_transcripts(
    server: RunningServer, speech_wav: bytes
) -> None:
    expected = transcribe(server.stub(), speech_wav, word_timestamps=True).transcript

    def call(_: int) -> pb.Transcript:
        return transcribe(server.stub(), speech_wav, word_timestamps=True).transcript

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert all(result == expected for result in results)


def test_interleaved_requests_of_different_audio_do_not_mix(
    server: RunningServer, speech_dir: Path, speech_wav: bytes
) -> None:
    other = (speech_dir / "speech_8000.wav").read_bytes()
    expected = {
        0: transcribe(server.stub(), speech_wav).transcript,
        1: transcribe(server.stub(), other).transcript,
    }
    inputs = [speech_wav, other] * 4

    def call(index: int) -> tuple[int, pb.Transcript]:
        return index % 2, transcribe(server.stub(), inputs[index]).transcript

    with ThreadPoolExecutor(8) as pool:
        for which, transcript in pool.map(call, range(len(inputs))):
            assert transcript == expected[which]


def test_server_info_describes_the_warm_model(
    stub: pb_grpc.TranscriptionServiceStub, tdt_checkpoint: Path
) -> None:
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.model_id == str(tdt_checkpoint)
    assert info.model_kind == pb.MODEL_KIND_TDT
    assert info.sample_rate_hertz == 16000
    assert info.vocabulary_size == 128
    assert info.dtype == "float32"
    assert info.warm
    assert info.device == "cpu"
    assert info.parameter_count > 100_000
    assert _seconds(info.load_duration) > 0
    assert _seconds(info.warmup_duration) > 0
    assert _seconds(info.uptime) > 0
    assert info.server_version
    assert info.max_request_bytes == 3_000_000
    assert info.library_versions["mlx"]
    assert info.library_versions["parakeet-mlx"]
