"""Audio files decoded to LINEAR16 for a stream: soundfile, then PyAV for what libsndfile cannot
read. Needs the `audio` extra (numpy, soundfile, PyAV): `pip install 'parakeet-client[audio]'`."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from numpy.typing import NDArray

__all__ = ["UnreadableAudio", "read_pcm"]

# Frames decoded at a time by soundfile: only the int16 output is held for the whole file.
_BLOCK_FRAMES = 65536


class UnreadableAudio(Exception):
    """The file is not audio this client can decode."""


def read_pcm(path: str | Path) -> tuple[NDArray[np.int16], int, int]:
    """Decode an audio file to LINEAR16 at its own rate: (samples, sample rate, channels).

    The samples are little-endian int16, channels interleaved; `samples.tobytes()` is what a
    stream sends. A file with more than two channels is averaged to mono, since a stream carries
    one or two. The rate is kept: the server resamples.

    Raises OSError when the file cannot be read and UnreadableAudio when it holds no audio.
    """
    data = Path(path).read_bytes()
    try:
        blocks, rate, channels = _read_with_soundfile(data)
    except (sf.SoundFileError, RuntimeError):
        # m4a/AAC and whatever else libsndfile does not know.
        blocks, rate, channels = _read_with_av(data, path)
    if not blocks or sum(len(block) for block in blocks) == 0:
        raise UnreadableAudio(f"{path} contains no audio samples")
    samples: NDArray[np.int16] = np.concatenate(blocks)
    return samples, rate, channels


def _to_linear16(frames: NDArray[np.float32]) -> NDArray[np.int16]:
    """(frames, channels) float in [-1, 1] -> interleaved little-endian int16, >2 channels mixed."""
    if frames.shape[1] > 2:
        frames = frames.mean(axis=1, keepdims=True, dtype=np.float32)
    scaled = np.clip(np.rint(frames.reshape(-1) * np.float32(32768)), -32768, 32767)
    out: NDArray[np.int16] = scaled.astype("<i2")
    return out


def _read_with_soundfile(data: bytes) -> tuple[list[NDArray[np.int16]], int, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        blocks = [
            _to_linear16(block)
            for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True)
        ]
        channels = int(f.channels)
        return blocks, int(f.samplerate), channels if channels <= 2 else 1


def _read_with_av(data: bytes, path: str | Path) -> tuple[list[NDArray[np.int16]], int, int]:
    blocks: list[NDArray[np.int16]] = []
    rate = channels = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise UnreadableAudio(f"{path} has no audio stream")
            # Packed float keeps the source's rate and layout and makes to_ndarray interleaved.
            resampler = av.AudioResampler(format="flt")
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    rate, channels = out.sample_rate, out.layout.nb_channels
                    interleaved = (
                        out.to_ndarray().astype(np.float32, copy=False).reshape(-1, channels)
                    )
                    blocks.append(_to_linear16(interleaved))
    except (av.FFmpegError, ValueError) as e:
        reason = e.strerror if isinstance(e, av.FFmpegError) and e.strerror else str(e)
        raise UnreadableAudio(f"cannot decode {path} as audio: {reason}") from e
    return blocks, rate, channels if channels <= 2 else 1
