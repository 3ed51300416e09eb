"""Audio decoding: request bytes (a container file or raw PCM) to mono float32 at the model's rate.

Everything happens in memory: soundfile first, PyAV for what it cannot read, soxr to resample.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

from parakeet_server.errors import AudioTooLong, InvalidAudio

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "RATE_RANGE",
    "RAW_DTYPES",
    "RESAMPLE_QUALITY",
    "SUPPORTED_FORMATS",
    "DecodedAudio",
    "Encoding",
    "check_channels",
    "check_duration",
    "check_rate",
    "decode_audio",
    "pcm_to_float",
    "resample",
]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 8
RATE_RANGE = f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"

SUPPORTED_FORMATS = (
    "WAV, FLAC, Ogg Vorbis, Opus, MP3, M4A/MP4 (AAC), WebM/Matroska, ADTS AAC, AIFF, CAF, WMA"
)

# soxr's default, VHQ, resamples a minute of 44.1 kHz audio to 16 kHz in ~17 ms against HQ's
# ~12 ms: noise next to decoding (50-200 ms), so the better filter costs nothing that matters.
RESAMPLE_QUALITY = "VHQ"

# Frames per decoded block: bounds the memory of one block (8 MiB for 32 channels) while keeping
# per-call overhead in numpy and soxr negligible.
_BLOCK_FRAMES = 65536

# Demuxers PyAV may pick. A whitelist keeps ffmpeg's playlist/concat/image demuxers (which can open
# other files or URLs) away from untrusted bytes.
_AV_FORMAT_WHITELIST = ",".join(
    ["mov", "matroska", "aac", "mp3", "ogg", "wav", "w64", "flac", "aiff", "caf", "amr", "asf"]
)
_SF_ERR_MALFORMED_FILE = 3
_AV_FORMAT_NAMES = {"mov,mp4,m4a,3gp,3g2,mj2": "m4a", "matroska,webm": "webm"}


class Encoding(enum.Enum):
    """How the request's bytes are laid out."""

    CONTAINER = "container"  # a file (WAV, FLAC, MP3, ...): format, rate and channels from it
    LINEAR16 = "linear16"  # raw little-endian int16, channels interleaved
    FLOAT32 = "float32"  # raw little-endian float32, channels interleaved


RAW_DTYPES: dict[Encoding, np.dtype[np.int16] | np.dtype[np.float32]] = {
    Encoding.LINEAR16: np.dtype("<i2"),
    Encoding.FLOAT32: np.dtype("<f4"),
}


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Decoded audio ready for the model, plus what was learnt about the source."""

    samples: NDArray[np.float32]  # 1-D, mono, at `sample_rate`
    sample_rate: int  # the target rate
    source_format: str  # "wav", "flac", "ogg", "opus", "mp3", "m4a", "linear16", "float32", ...
    source_sample_rate: int
    source_channels: int

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(
    data: bytes,
    *,
    encoding: Encoding = Encoding.CONTAINER,
    sample_rate: int = 0,
    channels: int = 0,
    target_rate: int = 16000,
    max_seconds: float | None = None,
) -> DecodedAudio:
    """Decode `data` to mono float32 at `target_rate`.

    For CONTAINER the file's own header gives rate and channels (`sample_rate` and `channels`
    are ignored); raw encodings need `sample_rate`, and `channels` (0 means 1).
    Give `max_seconds` for untrusted input: it is checked before the bulk of the work, and it
    also bounds memory, since a small compressed file can expand to hours of audio.

    Raises InvalidAudio when the bytes cannot be decoded or describe impossible audio, and
    AudioTooLong when the audio is longer than `max_seconds`.
    """
    if not MIN_SAMPLE_RATE <= target_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"target_rate {target_rate} is outside {RATE_RANGE}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if not data:
        raise InvalidAudio("the audio is empty (0 bytes)")
    if encoding is Encoding.CONTAINER:
        return _decode_container(data, target_rate, max_seconds)
    return _decode_raw(data, encoding, sample_rate, channels, target_rate, max_seconds)


def pcm_to_float(data: bytes, encoding: Encoding, channels: int) -> NDArray[np.float32]:
    """Raw interleaved PCM bytes -> mono float32 in [-1, 1) (LINEAR16) or as given (FLOAT32).

    `channels` 0 means 1. The byte count must be a whole number of frames.
    """
    if encoding not in RAW_DTYPES:
        raise ValueError(f"pcm_to_float needs a raw encoding, got {encoding}")
    channels = check_channels(channels)
    dtype = RAW_DTYPES[encoding]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise InvalidAudio(
            f"raw {encoding.name} audio of {len(data)} bytes is not a whole number of frames: "
            f"each frame of {channels} channel(s) is {frame_bytes} bytes"
        )
    pcm = np.frombuffer(data, dtype=dtype)
    if encoding is Encoding.FLOAT32 and not np.isfinite(pcm).all():
        raise InvalidAudio("FLOAT32 audio contains NaN or infinite samples")
    frames = pcm.reshape(-1, channels)
    scale = 1 / 32768 if encoding is Encoding.LINEAR16 else 1.0
    return _average([frames[:, c] for c in range(channels)], scale=scale)


def resample(samples: NDArray[np.float32], from_rate: int, to_rate: int) -> NDArray[np.float32]:
    """Resample 1-D float32 audio; returns the input itself when the rates are equal."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate or samples.size == 0:
        return samples
    out: NDArray[np.float32] = soxr.resample(
        samples.astype(np.float32, copy=False), from_rate, to_rate, quality=RESAMPLE_QUALITY
    )
    return out


# --- raw PCM ------------------------------------------------------------------------------------


def _decode_raw(
    data: bytes,
    encoding: Encoding,
    sample_rate: int,
    channels: int,
    target_rate: int,
    max_seconds: float | None,
) -> DecodedAudio:
    if sample_rate == 0:
        raise InvalidAudio(
            f"raw {encoding.name} audio needs a sample rate ({RATE_RANGE}); none was given"
        )
    check_rate(sample_rate, f"raw {encoding.name} audio")
    channels = check_channels(channels)
    frame_bytes = RAW_DTYPES[encoding].itemsize * channels
    # Reject on length before converting a single byte.
    check_duration(len(data) // frame_bytes / sample_rate, max_seconds)
    mono = pcm_to_float(data, encoding, channels)
    return DecodedAudio(
        samples=resample(mono, sample_rate, target_rate),
        sample_rate=target_rate,
        source_format=encoding.value,
        source_sample_rate=sample_rate,
        source_channels=channels,
    )


def _average(
    channels: list[NDArray[Any]], *, offset: float = 0.0, scale: float = 1.0
) -> NDArray[np.float32]:
    """Mean of equally long channels, as (x - offset) * scale, in one new float32 array."""
    # Adding column views is ~10x faster than ndarray.mean(axis=1) over a short inner axis.
    mono = channels[0].astype(np.float32)
    for channel in channels[1:]:
        mono += channel
    if offset:
        mono -= np.float32(offset * len(channels))
    if scale != 1.0 or len(channels) > 1:
        mono *= np.float32(scale / len(channels))
    return mono


def check_rate(rate: int, what: str) -> None:
    # The lower bound also stops a header claiming 1 Hz from expanding 16000-fold on resampling.
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidAudio(f"{what} has sample rate {rate} Hz; supported is {RATE_RANGE}")


def check_channels(channels: int) -> int:
    if channels == 0:
        return 1
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidAudio(
            f"channel count {channels} is not supported; give 1 to {MAX_CHANNELS} (0 means 1)"
        )
    return channels


def check_duration(seconds: float, max_seconds: float | None) -> None:
    """AudioTooLong when `seconds` is over `max_seconds` (None: no limit)."""
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(f"the audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")


# --- containers ---------------------------------------------------------------------------------


class _UsePyAV(Exception):
    """soundfile cannot (or should not) decode these bytes; PyAV gets a try."""

    def __init__(self, damage: str | None = None) -> None:
        super().__init__(damage)
        # What libsndfile said about a file it took for its own but could not read, if anything.
        self.damage = damage


class _Collector:
    """Mono blocks go in, target-rate mono comes out.

    Blocks are resampled as they arrive, so only the (usually smaller) target-rate audio is
    kept, and the duration limit is enforced while decoding, whatever a header claimed.
    """

    def __init__(self, target_rate: int, max_seconds: float | None) -> None:
        self._target_rate = target_rate
        self._max_seconds = max_seconds
        # One growing buffer: glibc grows a large one in place (mremap), so an hour of audio
        # (230 MB at 16 kHz) is held once, not once in blocks and again when they are joined.
        self._buffer = bytearray()
        self._stream: soxr.ResampleStream | None = None
        self._rate = 0
        self.source_rate = 0
        self.seconds = 0.0

    def add(self, mono: NDArray[np.float32], rate: int) -> None:
        """Take one block of float32 samples (copied: the caller may reuse it)."""
        if rate != self._rate:
            # A stream may change rate part-way (chained Ogg, concatenated MP3).
            check_rate(rate, "the audio")
            self._flush()
            self._rate = rate
            self.source_rate = self.source_rate or rate
            if rate != self._target_rate:
                self._stream = soxr.ResampleStream(
                    rate, self._target_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
                )
        self.seconds += len(mono) / rate
        check_duration(self.seconds, self._max_seconds)
        self._append(mono if self._stream is None else self._stream.resample_chunk(mono))

    def finish(self) -> NDArray[np.float32]:
        self._flush()
        samples: NDArray[np.float32] = np.frombuffer(self._buffer, np.float32)
        return samples

    def _append(self, samples: NDArray[np.float32]) -> None:
        self._buffer += np.ascontiguousarray(samples, np.float32).data.cast("B")

    def _flush(self) -> None:
        if self._stream is not None:
            self._append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
            self._stream = None


def _decode_container(data: bytes, target_rate: int, max_seconds: float | None) -> DecodedAudio:
    collector = _Collector(target_rate, max_seconds)
    try:
        source_format, channels = _read_with_soundfile(data, collector, max_seconds)
    except _UsePyAV as e:
        # Also taken when soundfile fails part-way (e.g. a truncated FLAC): PyAV skips a bad
        # packet instead of giving up on the whole file.
        collector = _Collector(target_rate, max_seconds)
        source_format, channels = _read_with_av(data, collector, max_seconds, e.damage)
    samples = collector.finish()
    if samples.size == 0:
        raise InvalidAudio(f"the {source_format} file contains no audio samples")
    if not np.isfinite(samples).all():
        raise InvalidAudio(f"the {source_format} file contains NaN or infinite samples")
    return DecodedAudio(
        samples=samples,
        sample_rate=target_rate,
        source_format=source_format,
        source_sample_rate=collector.source_rate,
        source_channels=channels,
    )


def _read_with_soundfile(
    data: bytes, collector: _Collector, max_seconds: float | None
) -> tuple[str, int]:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except sf.LibsndfileError as e:
        # Only "malformed" is worth passing on: random bytes that pass for MP3 get errors such
        # as "File does not exist or is not a regular file", which would only mislead.
        raise _UsePyAV(e.error_string if e.code == _SF_ERR_MALFORMED_FILE else None) from e
    except (sf.SoundFileError, RuntimeError) as e:
        raise _UsePyAV() from e
    with f:
        if f.subtype == "OPUS":
            # libsndfile decodes Opus at about half ffmpeg's speed.
            raise _UsePyAV()
        source_format = {"OGG": "ogg", "WAVEX": "wav", "RF64": "wav"}.get(
            f.format, f.format.lower()
        )
        check_rate(f.samplerate, f"the {source_format} file")
        # libsndfile's frame count comes from the header (or, for WAV, the data actually
        # present), so an over-long file is refused before any decoding.
        if f.frames > 0:
            check_duration(f.frames / f.samplerate, max_seconds)
        size = min(_BLOCK_FRAMES, f.frames) if f.frames > 0 else _BLOCK_FRAMES
        buffer = np.empty((size, f.channels), np.float32)
        try:
            while True:
                block = f.read(dtype="float32", always_2d=True, out=buffer)
                if len(block) == 0:
                    break
                collector.add(_average([block[:, c] for c in range(f.channels)]), f.samplerate)
        except sf.LibsndfileError as e:
            raise _UsePyAV(f"{source_format}: {e.error_string}") from e
        except (sf.SoundFileError, RuntimeError) as e:
            raise _UsePyAV(f"{source_format}: {e}") from e
        return source_format, f.channels


def _read_with_av(
    data: bytes, collector: _Collector, max_seconds: float | None, damage: str | None
) -> tuple[str, int]:
    try:
        container = av.open(
            io.BytesIO(data), mode="r", options={"format_whitelist": _AV_FORMAT_WHITELIST}
        )
    except (av.FFmpegError, OSError, ValueError) as e:
        reasons = f"libsndfile: {damage}; {_av_reason(e)}" if damage else _av_reason(e)
        raise InvalidAudio(
            f"could not decode the audio: it is not in a supported format, or it is damaged or "
            f"truncated ({reasons}). Supported: {SUPPORTED_FORMATS}. For headerless PCM, set the "
            "encoding to LINEAR16 or FLOAT32 and give the sample rate"
        ) from e
    with container:
        name = container.format.name
        source_format = _AV_FORMAT_NAMES.get(name, name.split(",")[0])
        if not container.streams.audio:
            raise InvalidAudio(f"the {source_format} file has no audio stream")
        stream = container.streams.audio[0]
        if source_format == "ogg" and stream.codec_context.name == "opus":
            source_format = "opus"
        if stream.duration is not None and stream.time_base is not None:
            check_duration(float(stream.duration * stream.time_base), max_seconds)
        elif container.duration is not None:
            check_duration(container.duration / av.time_base, max_seconds)
        channels = stream.codec_context.channels
        # Codec frames are ~1000 samples; a FIFO turns them into large blocks, since per-frame
        # numpy and soxr calls would cost more than the decoding itself.
        fifo = av.AudioFifo()
        layout: tuple[str, str, int] | None = None
        error: Exception | None = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = stream.codec_context.decode(packet)
                except av.FFmpegError as e:
                    # ffmpeg's own policy: report a damaged packet and carry on with the next.
                    error = e
                    continue
                for frame in frames:
                    if not frame.samples:
                        continue
                    frame_layout = (frame.format.name, frame.layout.name, frame.sample_rate)
                    if frame_layout != layout:
                        # A FIFO holds one layout; a stream may change part-way.
                        _drain(fifo, collector, 1)
                        fifo, layout = av.AudioFifo(), frame_layout
                        channels = frame.layout.nb_channels
                    # The FIFO insists on contiguous timestamps, which damaged input breaks.
                    frame.pts = None
                    fifo.write(frame)
                    _drain(fifo, collector, _BLOCK_FRAMES)
        except av.FFmpegError as e:
            # The demuxer hit the end of a truncated file: keep what decoded.
            error = e
        _drain(fifo, collector, 1)
        if collector.seconds == 0 and error is not None:
            raise InvalidAudio(
                f"the {source_format} file is damaged or truncated: no audio could be decoded "
                f"({_av_reason(error)})"
            )
        return source_format, channels


def _drain(fifo: av.AudioFifo, collector: _Collector, at_least: int) -> None:
    while fifo.samples >= max(at_least, 1):
        block = fifo.read(min(fifo.samples, _BLOCK_FRAMES))
        if block is None:
            break
        collector.add(_frame_to_mono(block), block.sample_rate)


def _av_reason(error: Exception) -> str:
    # FFmpegError's str() carries an errno and "'<none>'"; the bare reason reads better.
    reason = getattr(error, "strerror", None)
    return f"ffmpeg: {reason}" if reason else f"ffmpeg: {error}"


def _frame_to_mono(frame: av.AudioFrame) -> NDArray[np.float32]:
    pcm = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        rows = [pcm[c] for c in range(channels)]
    else:
        # Packed samples come as one row of interleaved channels.
        rows = [pcm[0, c::channels] for c in range(channels)]
    if not np.issubdtype(pcm.dtype, np.integer):
        return _average(rows)
    info = np.iinfo(pcm.dtype.name)
    # Unsigned formats (u8) are centred on half their range.
    offset = (int(info.max) + int(info.min) + 1) // 2
    return _average(rows, offset=offset, scale=1 / (int(info.max) - offset + 1))
