"""Streaming on the client side: LINEAR16 chunks (of a file decoded by `audio`, or from the
microphone) as StreamingTranscribe requests, and a view of the partial results that updates in
place on a terminal."""

from __future__ import annotations

import importlib
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType, TracebackType
from typing import Any, TextIO

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb

__all__ = [
    "MIC_BLOCK_MS",
    "MIC_INSTALL_HINT",
    "MIC_SAMPLE_RATE",
    "Microphone",
    "MicrophoneUnavailable",
    "Renderer",
    "chunk_requests",
    "import_sounddevice",
    "requests",
]

MIC_SAMPLE_RATE = 16000
MIC_BLOCK_MS = 100
MIC_INSTALL_HINT = (
    "--mic needs the sounddevice package and the PortAudio library: "
    "pip install 'parakeet-client[mic]' (PortAudio e.g. with apt-get install libportaudio2)"
)

_DIM = "\x1b[2m"
_RESET = "\x1b[0m"
_CLEAR_TO_END = "\x1b[K"
_UP_AND_CLEAR = "\x1b[1A\x1b[2K"


class MicrophoneUnavailable(Exception):
    """sounddevice, PortAudio or an input device is missing."""


# --- requests -----------------------------------------------------------------------------------


def chunk_requests(
    config: pb.StreamingConfig, chunks: Iterable[bytes]
) -> Iterator[pb.StreamingTranscribeRequest]:
    """The config message, then one audio message per chunk."""
    yield pb.StreamingTranscribeRequest(config=config)
    for chunk in chunks:
        yield pb.StreamingTranscribeRequest(audio=chunk)


def requests(
    config: pb.StreamingConfig,
    pcm_bytes: bytes,
    chunk_bytes: int,
    *,
    realtime_rate_bytes_per_s: float | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
) -> Iterator[pb.StreamingTranscribeRequest]:
    """The config, then `pcm_bytes` in chunks of `chunk_bytes` (the last may be shorter).

    With `realtime_rate_bytes_per_s`, each chunk is sent once its last byte would have been
    captured live, counted from the first chunk: chunk k (from 0) leaves (k + 1) chunk durations
    after the start, so the stream takes as long as the audio. Setting `stop` ends the audio
    early (the caller half-closes and still gets the final result); it also cuts a wait short
    unless `sleep` is given. `clock` and `sleep` are for tests.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if realtime_rate_bytes_per_s is not None and not realtime_rate_bytes_per_s > 0:
        raise ValueError(f"the real-time rate must be positive, got {realtime_rate_bytes_per_s}")
    if sleep is None:
        sleep = stop.wait if stop is not None else time.sleep
    chunks = _chunks(pcm_bytes, chunk_bytes, realtime_rate_bytes_per_s, stop, clock, sleep)
    return chunk_requests(config, chunks)


def _chunks(
    pcm: bytes,
    chunk_bytes: int,
    rate: float | None,
    stop: threading.Event | None,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
) -> Iterator[bytes]:
    view = memoryview(pcm)
    start = clock()
    for offset in range(0, len(pcm), chunk_bytes):
        end = min(offset + chunk_bytes, len(pcm))
        if rate is not None:
            # Deadlines count from `start`, not from the last send, so oversleeping never adds up.
            delay = start + end / rate - clock()
            if delay > 0:
                sleep(delay)
        if stop is not None and stop.is_set():
            return
        yield bytes(view[offset:end])


# --- microphone ---------------------------------------------------------------------------------


def import_sounddevice() -> ModuleType:
    """sounddevice, imported only for --mic: it is an optional extra and needs PortAudio."""
    try:
        return importlib.import_module("sounddevice")
    except (ImportError, OSError) as e:  # OSError: "PortAudio library not found"
        raise MicrophoneUnavailable(MIC_INSTALL_HINT) from e


class Microphone:
    """The default input device as LINEAR16 chunks, 16 kHz mono, about 100 ms each.

    Recording starts on entering the context; `chunks()` yields what was recorded until `stop`
    is set, then what is still queued, and ends.
    """

    channels = 1

    def __init__(
        self,
        stop: threading.Event,
        *,
        sample_rate: int = MIC_SAMPLE_RATE,
        block_ms: int = MIC_BLOCK_MS,
    ) -> None:
        self._sd = import_sounddevice()
        self.sample_rate = sample_rate
        self._block_frames = sample_rate * block_ms // 1000
        self._stop = stop
        self._blocks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._stream: Any = None

    def __enter__(self) -> Microphone:
        try:
            self._stream = self._sd.RawInputStream(
                samplerate=self.sample_rate,
                channels=self.channels,
                dtype="int16",
                blocksize=self._block_frames,
                callback=self._on_block,
            )
            self._stream.start()
        except (self._sd.PortAudioError, ValueError) as e:
            raise MicrophoneUnavailable(f"cannot open the microphone: {e}") from e
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stream.stop()
        self._stream.close()

    def _on_block(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: hand the bytes over and return at once.
        self._blocks.put(bytes(indata))

    def chunks(self) -> Iterator[bytes]:
        while not self._stop.is_set():
            try:
                block = self._blocks.get(timeout=0.05)
            except queue.Empty:
                continue
            yield block
        while True:
            try:
                block = self._blocks.get_nowait()
            except queue.Empty:
                return
            yield block


# --- display ------------------------------------------------------------------------------------


class Renderer:
    """Shows a stream's responses.

    On a terminal, one live line is rewritten in place: finalized text in normal style, the draft
    dimmed. Finalized text that outgrows the line is printed above it and stays there until
    `finish`, which erases the live view and prints the final transcript. Elsewhere nothing is
    printed before the final transcript, or with `interim` one line per response:
    `[draft] <text so far>` and at the end `[final] <transcript>`.

    With `utterances` (a stream with endpointing), each utterance is printed on a line of its
    own as it closes (`utterance`), the live line shows the open utterance only, and `finish`
    prints nothing more: the utterances are the transcript.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        interim: bool = False,
        tty: bool | None = None,
        width: int | None = None,
        utterances: bool = False,
    ) -> None:
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        self._interim = interim
        self._width = width
        self._utterances = utterances
        self._closed = ""  # the closed utterances' texts, as finalized_text starts with them
        self._committed = 0  # characters of finalized text printed above the live line
        self._lines = 0  # lines printed above the live line
        self._live = False  # something is on the live line

    def update(self, response: pb.StreamingTranscribeResponse) -> None:
        finalized, draft = response.finalized_text, response.draft_text
        if self._utterances:
            finalized = finalized[len(self._closed) :].lstrip()
            draft = draft if finalized else draft.lstrip()
        if self._tty:
            self._draw(finalized, draft)
        elif self._interim:
            self._out.write(f"[draft] {finalized}{draft}\n")
            self._out.flush()

    def utterance(self, response: pb.StreamingTranscribeResponse) -> None:
        """Print the utterance a response closes on a line of its own."""
        text = response.utterance.transcript.text
        self._erase()
        if text:
            self._closed = f"{self._closed} {text}" if self._closed else text
            prefix = "[utterance] " if self._interim and not self._tty else ""
            self._out.write(f"{prefix}{text}\n")
        self._out.flush()

    def finish(self, response: pb.StreamingTranscribeResponse) -> None:
        """Print the final transcript of the final response."""
        if response.HasField("transcript"):
            text = response.transcript.text
        else:
            text = response.finalized_text
        self._erase()
        if self._utterances:
            self._out.flush()
            return
        prefix = "[final] " if self._interim and not self._tty else ""
        self._out.write(f"{prefix}{text}\n")
        self._out.flush()

    def _erase(self) -> None:
        """Clear the live view (on a terminal)."""
        if self._tty:
            self._out.write("\r" + _CLEAR_TO_END + _UP_AND_CLEAR * self._lines)
            self._committed = self._lines = 0
            self._live = False

    def close(self) -> None:
        """Leave the live view as it is, so that what follows (an error) starts on a new line."""
        if self._live:
            self._out.write("\n")
            self._out.flush()
            self._live = False

    def _draw(self, finalized: str, draft: str) -> None:
        # One column short of the width: writing the last column makes some terminals wrap.
        width = max(self._width or shutil.get_terminal_size().columns, 20) - 1
        pending = finalized[self._committed :]
        while len(pending) > width:
            cut = pending.rfind(" ", 0, width + 1)
            if cut <= 0:
                cut = width
            self._out.write(f"\r{pending[:cut]}{_CLEAR_TO_END}\n")
            self._lines += 1
            taken = cut + (pending[cut : cut + 1] == " ")
            self._committed += taken
            pending = pending[taken:]
        room = width - len(pending)
        if len(draft) > room:
            draft = "…" + draft[len(draft) - room + 1 :] if room > 1 else ""
        shown = f"{_DIM}{draft}{_RESET}" if draft else ""
        self._out.write(f"\r{pending}{shown}{_CLEAR_TO_END}")
        self._out.flush()
        self._live = True
