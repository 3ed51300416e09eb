"""Raw PCM of a live stream, arriving in pieces of any size -> mono float32 at the model's rate."""

from __future__ import annotations

import numpy as np
import soxr
from numpy.typing import NDArray

from parakeet_server.audio.decode import (
    RATE_RANGE,
    RAW_DTYPES,
    RESAMPLE_QUALITY,
    Encoding,
    check_channels,
    check_rate,
    pcm_to_float,
)
from parakeet_server.errors import InvalidAudio


class PcmStream:
    """Raw PCM arriving in pieces of any size -> mono float32 at the target rate.

    A sample (or a frame of interleaved channels) may be split across two pieces; the bytes
    are carried over. Resampling streams through soxr, whose output does not depend on how
    the input was split: a stream yields exactly the samples `decode_audio` gives for the
    same bytes sent at once.
    """

    def __init__(
        self, encoding: Encoding, sample_rate: int, channels: int, target_rate: int = 16000
    ) -> None:
        if encoding not in RAW_DTYPES:
            raise InvalidAudio(
                "a stream carries raw PCM: set the encoding to LINEAR16 or FLOAT32 "
                "(container files cannot be streamed; send them with Transcribe)"
            )
        if sample_rate == 0:
            raise InvalidAudio(f"raw {encoding.name} audio needs a sample rate ({RATE_RANGE})")
        check_rate(sample_rate, f"raw {encoding.name} audio")
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.channels = check_channels(channels)
        self.frame_bytes = RAW_DTYPES[encoding].itemsize * self.channels
        self._carry = b""
        self._resampler = (
            soxr.ResampleStream(
                sample_rate, target_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
            if sample_rate != target_rate
            else None
        )
        self.source_frames = 0

    def feed(self, data: bytes) -> NDArray[np.float32]:
        """Converts every whole frame received so far; keeps a split frame for the next piece."""
        data = self._carry + data if self._carry else data
        whole = len(data) - len(data) % self.frame_bytes
        self._carry = data[whole:]
        if not whole:
            return np.zeros(0, np.float32)
        mono = pcm_to_float(data[:whole], self.encoding, self.channels)
        self.source_frames += len(mono)
        if self._resampler is None:
            return mono
        out: NDArray[np.float32] = self._resampler.resample_chunk(mono)
        return out

    def finish(self) -> NDArray[np.float32]:
        """The resampler's tail; an unfinished frame at the end is an error."""
        if self._carry:
            raise InvalidAudio(
                f"the stream ended inside a frame: {len(self._carry)} byte(s) left over, and "
                f"each frame of {self.channels} channel(s) of {self.encoding.name} is "
                f"{self.frame_bytes} bytes"
            )
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out: NDArray[np.float32] = self._resampler.resample_chunk(
            np.zeros(0, np.float32), last=True
        )
        return out
