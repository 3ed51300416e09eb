"""audio.py against real speech in every container, raw PCM, and broken or hostile input."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from audio_samples import convert, speak
from parakeet_server.audio.decode import (
    MAX_CHANNELS,
    DecodedAudio,
    Encoding,
    decode_audio,
    pcm_to_float,
    resample,
)
from parakeet_server.errors import AudioTooLong, InvalidAudio

TEXT = "Turn left at the second light, then park behind the blue van."
CONTAINERS = ("wav", "flac", "ogg", "opus", "mp3", "m4a")
# Encoders pad or trim a few ms at the edges (gapless metadata usually undoes it).
DURATION_TOLERANCE_S = 0.08
# Decoding broken input must fail (or succeed) fast; a hang would show up here, well before
# pytest-timeout's global limit.
QUICK_S = 2.0

MakeAudio = Callable[..., bytes]


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    spoken = speak(TEXT, root / "espeak.wav")
    convert(spoken, root / "ref16k.wav", rate=16000, channels=1)
    return root


@pytest.fixture(scope="module")
def reference(audio_dir: Path) -> NDArray[np.float32]:
    """The sentence at 16 kHz mono, read without the code under test."""
    samples, rate = sf.read(audio_dir / "ref16k.wav", dtype="float32")
    assert rate == 16000
    return np.asarray(samples, dtype=np.float32)


@pytest.fixture(scope="module")
def make_audio(audio_dir: Path) -> MakeAudio:
    """make_audio(fmt, rate=None, channels=None) -> the sentence as bytes, converted once."""
    cache: dict[tuple[str, int | None, int | None], bytes] = {}

    def make(fmt: str, rate: int | None = None, channels: int | None = None) -> bytes:
        key = (fmt, rate, channels)
        if key not in cache:
            path = audio_dir / f"speech_{rate}_{channels}.{fmt}"
            convert(audio_dir / "espeak.wav", path, rate=rate, channels=channels)
            cache[key] = path.read_bytes()
        return cache[key]

    return make


def envelope(samples: NDArray[np.float32], window: int = 320) -> NDArray[np.float64]:
    """RMS per 20 ms window at 16 kHz."""
    n = len(samples) // window
    frames = samples[: n * window].astype(np.float64).reshape(n, window)
    rms: NDArray[np.float64] = np.sqrt((frames**2).mean(axis=1))
    return rms


def envelope_correlation(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Best Pearson correlation of the two RMS envelopes over a few windows of lag."""
    ea, eb = envelope(a), envelope(b)
    best = -1.0
    for lag in range(-5, 6):
        x, y = (ea[lag:], eb) if lag >= 0 else (ea, eb[-lag:])
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


def assert_model_ready(decoded: DecodedAudio) -> None:
    assert decoded.sample_rate == 16000
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert np.isfinite(decoded.samples).all()
    assert decoded.duration_seconds == len(decoded.samples) / 16000


def decode_quickly(data: bytes) -> DecodedAudio | InvalidAudio:
    """Decode; return the InvalidAudio instead of raising it, and insist it was quick."""
    start = time.perf_counter()
    try:
        result: DecodedAudio | InvalidAudio = decode_audio(data)
    except InvalidAudio as e:
        result = e
    assert time.perf_counter() - start < QUICK_S
    return result


# --- containers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", CONTAINERS)
def test_each_container_decodes_to_16k_mono_float32(
    fmt: str, make_audio: MakeAudio, reference: NDArray[np.float32]
) -> None:
    decoded = decode_audio(make_audio(fmt))

    assert_model_ready(decoded)
    assert decoded.source_format == fmt
    assert decoded.source_channels == 1
    assert decoded.duration_seconds == pytest.approx(
        len(reference) / 16000, abs=DURATION_TOLERANCE_S
    )
    assert envelope_correlation(decoded.samples, reference) > 0.95


@pytest.mark.parametrize(
    ("fmt", "rate", "channels"),
    [
        ("wav", 8000, 1),
        ("wav", 44100, 1),
        ("wav", 48000, 1),
        ("wav", 44100, 2),
        ("flac", 48000, 2),
        ("mp3", 44100, 2),
        ("m4a", 48000, 2),
        ("opus", 48000, 2),
    ],
)
def test_any_rate_and_channel_count_lands_at_16k_mono(
    fmt: str, rate: int, channels: int, make_audio: MakeAudio, reference: NDArray[np.float32]
) -> None:
    decoded = decode_audio(make_audio(fmt, rate, channels))

    assert_model_ready(decoded)
    assert decoded.source_sample_rate == rate
    assert decoded.source_channels == channels
    assert decoded.duration_seconds == pytest.approx(
        len(reference) / 16000, abs=DURATION_TOLERANCE_S
    )
    # 8 kHz loses everything above 4 kHz, but the loudness contour survives.
    assert envelope_correlation(decoded.samples, reference) > 0.95


def test_target_rate_other_than_16k(make_audio: MakeAudio, reference: NDArray[np.float32]) -> None:
    decoded = decode_audio(make_audio("wav", 44100), target_rate=8000)

    assert decoded.sample_rate == 8000
    assert decoded.source_sample_rate == 44100
    assert len(decoded.samples) == pytest.approx(len(reference) / 2, abs=2)


def test_stereo_container_is_the_mean_of_its_channels() -> None:
    left = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    right = np.full(16000, 0.25, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1), 16000, format="WAV", subtype="FLOAT")

    decoded = decode_audio(buf.getvalue())

    assert decoded.source_channels == 2
    np.testing.assert_array_equal(decoded.samples, (left + right) / 2)


def test_container_ignores_raw_only_arguments(make_audio: MakeAudio) -> None:
    decoded = decode_audio(make_audio("wav", 44100), sample_rate=8000, channels=2)

    assert decoded.source_sample_rate == 44100
    assert decoded.source_channels == 1


# --- raw PCM ------------------------------------------------------------------------------------


def test_linear16_decodes_exactly() -> None:
    pcm = np.random.default_rng(0).integers(-32768, 32768, 16000, dtype=np.int16)

    decoded = decode_audio(pcm.tobytes(), encoding=Encoding.LINEAR16, sample_rate=16000)

    np.testing.assert_array_equal(decoded.samples, pcm.astype(np.float32) / 32768)
    assert decoded.source_format == "linear16"
    assert (decoded.source_sample_rate, decoded.source_channels) == (16000, 1)


def test_float32_decodes_exactly() -> None:
    pcm = np.random.default_rng(1).uniform(-1, 1, 16000).astype(np.float32)

    decoded = decode_audio(pcm.tobytes(), encoding=Encoding.FLOAT32, sample_rate=16000)

    np.testing.assert_array_equal(decoded.samples, pcm)
    assert decoded.source_format == "float32"


@pytest.mark.parametrize("encoding", [Encoding.LINEAR16, Encoding.FLOAT32])
def test_raw_stereo_is_averaged(encoding: Encoding) -> None:
    rng = np.random.default_rng(2)
    if encoding is Encoding.LINEAR16:
        frames = rng.integers(-32768, 32768, (8000, 2), dtype=np.int16)
        expected = (frames[:, 0].astype(np.float32) + frames[:, 1]) / 2 / 32768
    else:
        frames = rng.uniform(-1, 1, (8000, 2)).astype(np.float32)
        expected = (frames[:, 0] + frames[:, 1]) / 2

    decoded = decode_audio(frames.tobytes(), encoding=encoding, sample_rate=16000, channels=2)

    np.testing.assert_array_equal(decoded.samples, expected)
    assert decoded.source_channels == 2


@pytest.mark.parametrize(
    ("fmt", "encoding"), [("s16le", Encoding.LINEAR16), ("f32le", Encoding.FLOAT32)]
)
def test_raw_speech_at_44k_matches_the_container(
    fmt: str, encoding: Encoding, make_audio: MakeAudio
) -> None:
    from_raw = decode_audio(make_audio(fmt, 44100), encoding=encoding, sample_rate=44100)
    from_wav = decode_audio(make_audio("wav", 44100))

    assert_model_ready(from_raw)
    np.testing.assert_allclose(from_raw.samples, from_wav.samples, atol=1e-4)


def test_pcm_to_float_streams_chunks_without_resampling() -> None:
    pcm = np.array([[0, 16384], [-32768, 32767]], dtype=np.int16)

    mono = pcm_to_float(pcm.tobytes(), Encoding.LINEAR16, channels=2)

    np.testing.assert_array_equal(mono, np.array([0.25, -0.5 / 32768], dtype=np.float32))
    assert pcm_to_float(b"", Encoding.FLOAT32, channels=1).shape == (0,)


def test_pcm_to_float_refuses_container_encoding() -> None:
    with pytest.raises(ValueError, match="raw encoding"):
        pcm_to_float(b"\0\0", Encoding.CONTAINER, channels=1)


def test_resample_changes_length_by_the_rate_ratio(reference: NDArray[np.float32]) -> None:
    up = resample(reference, 16000, 48000)

    assert up.dtype == np.float32
    assert len(up) == 3 * len(reference)
    assert envelope_correlation(resample(up, 48000, 16000), reference) > 0.99
    assert resample(reference, 16000, 16000) is reference


# --- errors -------------------------------------------------------------------------------------


def test_empty_audio_is_invalid() -> None:
    with pytest.raises(InvalidAudio, match="empty"):
        decode_audio(b"")
    with pytest.raises(InvalidAudio, match="empty"):
        decode_audio(b"", encoding=Encoding.LINEAR16, sample_rate=16000)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_name_the_supported_formats(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(20000)

    result = decode_quickly(data)

    assert isinstance(result, InvalidAudio)
    assert "supported format" in str(result)
    assert "WAV, FLAC" in str(result)
    assert "LINEAR16" in str(result)  # the hint for headerless PCM sent as a container


@pytest.mark.parametrize("rate", [0, -16000, 7999, 192001, 10**9])
@pytest.mark.parametrize("encoding", [Encoding.LINEAR16, Encoding.FLOAT32])
def test_raw_needs_a_sane_sample_rate(rate: int, encoding: Encoding) -> None:
    with pytest.raises(InvalidAudio, match="sample rate"):
        decode_audio(b"\0" * 64, encoding=encoding, sample_rate=rate)


@pytest.mark.parametrize("channels", [-1, MAX_CHANNELS + 1, 1000])
def test_raw_needs_a_sane_channel_count(channels: int) -> None:
    with pytest.raises(InvalidAudio, match="channel count"):
        decode_audio(b"\0" * 64, encoding=Encoding.LINEAR16, sample_rate=16000, channels=channels)


def test_raw_zero_channels_means_mono() -> None:
    decoded = decode_audio(b"\0" * 64, encoding=Encoding.LINEAR16, sample_rate=16000, channels=0)

    assert decoded.source_channels == 1
    assert len(decoded.samples) == 32


@pytest.mark.parametrize(
    ("encoding", "channels", "size"),
    [
        (Encoding.LINEAR16, 1, 3),
        (Encoding.LINEAR16, 2, 6),
        (Encoding.FLOAT32, 1, 6),
        (Encoding.FLOAT32, 2, 12),
    ],
)
def test_raw_length_must_be_whole_frames(encoding: Encoding, channels: int, size: int) -> None:
    with pytest.raises(InvalidAudio, match="whole number of frames"):
        decode_audio(b"\0" * size, encoding=encoding, sample_rate=16000, channels=channels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float32_rejects_nan_and_inf(bad: float) -> None:
    pcm = np.zeros(100, np.float32)
    pcm[50] = bad

    with pytest.raises(InvalidAudio, match="NaN or infinite"):
        decode_audio(pcm.tobytes(), encoding=Encoding.FLOAT32, sample_rate=16000)


def test_float_wav_with_nan_is_invalid() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.array([0.0, np.nan, 0.5], np.float32), 16000, format="WAV", subtype="FLOAT")

    with pytest.raises(InvalidAudio, match="NaN or infinite"):
        decode_audio(buf.getvalue())


def test_container_without_samples_is_invalid() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, np.int16), 16000, format="WAV")

    with pytest.raises(InvalidAudio, match="no audio samples"):
        decode_audio(buf.getvalue())


def test_container_with_absurd_sample_rate_is_invalid() -> None:
    # 1 Hz would turn each sample into 16000 after resampling.
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, np.int16), 1, format="WAV")

    with pytest.raises(InvalidAudio, match="sample rate 1 Hz"):
        decode_audio(buf.getvalue())


# What a cut file gives is decided by where its format keeps what a decoder needs. WAV, FLAC,
# Ogg (Vorbis, Opus) and MP3 are a header then self-contained frames: a cut past the header and
# the first frame decodes the whole frames before it, a cut before that leaves nothing to
# decode. The headers differ a lot: WAV's is 44 bytes, MP3 has none beyond a frame's, FLAC's
# holds a seek table and padding, the Ogg codecs' setup packets take kilobytes. These are the
# smallest cuts that decode, measured on this sentence (the cuts tested fall far from them).
# ffmpeg's m4a puts its sample table at the end: no cut decodes.
_FIRST_DECODABLE_CUT = {"wav": 80, "flac": 10331, "ogg": 9699, "opus": 12690, "mp3": 335}


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a", "ogg", "opus"])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.05, 0.005])
def test_truncated_file_decodes_its_head_or_fails_clearly(
    fmt: str, keep: float, make_audio: MakeAudio, reference: NDArray[np.float32]
) -> None:
    data = make_audio(fmt)
    cut = int(len(data) * keep)
    full = len(reference) / 16000

    result = decode_quickly(data[:cut])

    if fmt != "m4a" and cut >= _FIRST_DECODABLE_CUT[fmt]:
        assert not isinstance(result, InvalidAudio), result
        assert_model_ready(result)
        # The frames before the cut, no more: at most the kept share of the file's duration
        # (a little more for formats whose header is a larger share of the bytes), and for
        # uncompressed WAV exactly that share.
        kept = result.duration_seconds / full
        if fmt == "wav":
            assert kept == pytest.approx(keep, abs=0.002)
        else:
            assert keep / 3 < kept <= keep + 0.02, kept
    else:
        assert isinstance(result, InvalidAudio), f"{fmt} cut at {cut} bytes decoded"
        assert "damaged or truncated" in str(result)


def test_wav_header_claiming_4gb_decodes_what_is_there_and_allocates_for_that(
    make_audio: MakeAudio, reference: NDArray[np.float32]
) -> None:
    data = bytearray(make_audio("wav", 16000))
    at = data.index(b"data")
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)  # RIFF size
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFF0)  # data size

    # tracemalloc sees every allocation, numpy's included, whether its pages are touched or
    # not (resident memory would not see an untouched 4 GB calloc).
    tracemalloc.start()
    try:
        result = decode_quickly(bytes(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert not isinstance(result, InvalidAudio), result
    assert result.duration_seconds == pytest.approx(len(reference) / 16000, abs=0.01)
    assert peak < 4 * len(data) + 2_000_000, f"{peak / 1e6:.1f} MB for a {len(data)} byte file"


def test_decoding_holds_the_output_not_the_input(tmp_path: Path) -> None:
    """48 kHz stereo is resampled block by block: the input as float32 would be 6 times the
    16 kHz mono output; decoding it whole would hold both."""
    seconds = 120
    stereo = np.random.default_rng(3).normal(0, 0.1, (48000 * seconds, 2)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, stereo, 48000, format="WAV", subtype="PCM_16")
    data = out.getvalue()
    del stereo, out

    tracemalloc.start()
    try:
        decoded = decode_audio(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    output = decoded.samples.nbytes
    assert output == 16000 * seconds * 4
    # The output (its buffer over-allocates by up to 1/8), a block or two, and the NaN check's
    # one byte per sample; decoding whole would add 6 x the output.
    assert peak < 1.6 * output, f"peak {peak / 1e6:.1f} MB for {output / 1e6:.1f} MB of output"


# --- max_seconds --------------------------------------------------------------------------------


def test_raw_longer_than_max_seconds_is_refused_before_converting() -> None:
    data = bytes(16000 * 2 * 120)  # two minutes of 16 kHz LINEAR16

    start = time.perf_counter()
    with pytest.raises(AudioTooLong, match=r"120\.0 s long; the limit is 60 s"):
        decode_audio(data, encoding=Encoding.LINEAR16, sample_rate=16000, max_seconds=60)
    assert time.perf_counter() - start < 0.05


@pytest.mark.parametrize("fmt", CONTAINERS)
def test_container_longer_than_max_seconds_is_refused_from_its_header(
    fmt: str, make_audio: MakeAudio, reference: NDArray[np.float32]
) -> None:
    full = len(reference) / 16000

    # The message gives the whole length: it was read from the header, not found by decoding.
    with pytest.raises(AudioTooLong, match=f"{full:.1f} s long; the limit is 1 s"):
        decode_audio(make_audio(fmt), max_seconds=1)
    assert decode_audio(make_audio(fmt), max_seconds=full + 1).duration_seconds < full + 1


def test_long_silent_flac_is_refused_from_its_header() -> None:
    # Silence compresses ~700-fold: 14 KB that would decode to 38 MB of float32.
    buf = io.BytesIO()
    sf.write(buf, np.zeros(8000 * 600, np.int16), 8000, format="FLAC")

    with pytest.raises(AudioTooLong, match=r"600\.0 s long"):
        decode_audio(buf.getvalue(), max_seconds=30)


@pytest.mark.parametrize("value", [0, -1.0])
def test_max_seconds_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match="max_seconds"):
        decode_audio(b"\0\0", encoding=Encoding.LINEAR16, sample_rate=16000, max_seconds=value)
