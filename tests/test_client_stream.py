"""The streaming client on its own: file decoding, request generation, the live view, and the
`stream` command against a small fake server (the real server's streaming is tested elsewhere)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf
from google.protobuf import duration_pb2

from audio_samples import convert, speak
from parakeet_client import cli
from parakeet_client.audio import UnreadableAudio, read_pcm
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_client.stream import MIC_INSTALL_HINT, Renderer, requests

CONFIG = pb.StreamingConfig(
    format=pb.AudioFormat(
        encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=16000, channel_count=1
    )
)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short spoken phrase as 16 kHz mono WAV, 44.1 kHz stereo WAV, 48 kHz stereo m4a and
    6-channel WAV."""
    root = tmp_path_factory.mktemp("stream-audio")
    spoken = speak("Hello there, streaming world.", root / "espeak.wav")
    convert(spoken, root / "mono.wav", rate=16000, channels=1)
    convert(spoken, root / "stereo.wav", rate=44100, channels=2)
    convert(spoken, root / "stereo.m4a", rate=48000, channels=2)
    convert(spoken, root / "six.wav", rate=16000, channels=6)
    return root


# --- read_pcm -----------------------------------------------------------------------------------


def test_read_pcm_wav_returns_the_files_own_samples(audio: Path) -> None:
    pcm, rate, channels = read_pcm(audio / "mono.wav")
    expected, _ = sf.read(audio / "mono.wav", dtype="int16")
    assert (rate, channels) == (16000, 1)
    assert pcm.dtype == np.dtype("<i2")
    np.testing.assert_array_equal(pcm, expected)


def test_read_pcm_keeps_stereo_interleaved_at_the_native_rate(audio: Path) -> None:
    pcm, rate, channels = read_pcm(audio / "stereo.wav")
    expected, _ = sf.read(audio / "stereo.wav", dtype="int16", always_2d=True)
    assert (rate, channels) == (44100, 2)
    np.testing.assert_array_equal(pcm, expected.reshape(-1))


def test_read_pcm_decodes_m4a_with_pyav(audio: Path) -> None:
    pcm, rate, channels = read_pcm(audio / "stereo.m4a")
    reference, _, _ = read_pcm(audio / "stereo.wav")
    assert (rate, channels) == (48000, 2)
    # AAC adds priming and padding: the duration matches to within a few frames of 1024.
    assert len(pcm) / 2 / 48000 == pytest.approx(len(reference) / 2 / 44100, abs=0.1)
    assert np.abs(pcm).max() > 1000


def test_read_pcm_averages_more_than_two_channels_to_mono(audio: Path) -> None:
    pcm, rate, channels = read_pcm(audio / "six.wav")
    frames, _ = sf.read(audio / "six.wav", dtype="float32", always_2d=True)
    assert (rate, channels) == (16000, 1)
    expected = np.clip(np.rint(frames.mean(axis=1) * 32768), -32768, 32767).astype(np.int16)
    np.testing.assert_allclose(pcm, expected, atol=1)


def test_read_pcm_refuses_what_is_not_audio(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all " * 100)
    with pytest.raises(UnreadableAudio, match="cannot decode"):
        read_pcm(garbage)
    with pytest.raises(OSError, match="No such file"):
        read_pcm(tmp_path / "missing.wav")


# --- requests -----------------------------------------------------------------------------------


def test_requests_send_the_config_then_all_the_bytes_in_chunks() -> None:
    pcm = bytes(range(256)) * 40  # 10240 bytes
    messages = list(requests(CONFIG, pcm, 3000))
    assert messages[0].WhichOneof("request") == "config"
    assert messages[0].config == CONFIG
    assert all(m.WhichOneof("request") == "audio" for m in messages[1:])
    assert [len(m.audio) for m in messages[1:]] == [3000, 3000, 3000, 1240]
    assert b"".join(m.audio for m in messages[1:]) == pcm


def test_requests_refuse_an_empty_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        requests(CONFIG, b"\0\0", 0)


def test_stop_ends_the_audio_early() -> None:
    stop = threading.Event()
    messages = requests(CONFIG, b"\0" * 10000, 1000, stop=stop)
    next(messages)  # the config
    next(messages)
    stop.set()
    assert list(messages) == []


class FakeClock:
    """time.monotonic and time.sleep for a clock that moves only when slept on."""

    def __init__(self, oversleep: float = 0.0) -> None:
        self.now = 100.0
        self.oversleep = oversleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.oversleep


def test_realtime_pacing_sends_each_chunk_once_it_was_recorded() -> None:
    clock = FakeClock()
    rate = 32000  # bytes per second: 16 kHz mono LINEAR16
    sent = [
        clock.now - 100.0
        for _ in requests(
            CONFIG,
            b"\0" * 32000,
            3200,
            realtime_rate_bytes_per_s=rate,
            clock=clock,
            sleep=clock.sleep,
        )
    ]
    assert sent[0] == 0  # the config goes at once
    assert sent[1:] == pytest.approx([0.1 * (k + 1) for k in range(10)])


def test_realtime_pacing_does_not_drift_when_sleeps_overrun() -> None:
    clock = FakeClock(oversleep=0.02)
    sent = [
        clock.now - 100.0
        for _ in requests(
            CONFIG,
            b"\0" * 64000,
            3200,
            realtime_rate_bytes_per_s=32000,
            clock=clock,
            sleep=clock.sleep,
        )
    ]
    # Each send is late by one overrun at most; the overruns never add up.
    for k, when in enumerate(sent[1:]):
        assert 0.1 * (k + 1) <= when <= 0.1 * (k + 1) + 0.02 + 1e-9


def test_realtime_pacing_takes_as_long_as_the_audio() -> None:
    pcm = b"\0" * 9600  # 0.3 s of 16 kHz mono LINEAR16
    start = time.monotonic()
    messages = list(requests(CONFIG, pcm, 640, realtime_rate_bytes_per_s=32000))
    elapsed = time.monotonic() - start
    assert len(messages) == 1 + 15
    assert 0.95 <= elapsed / 0.3 <= 1.5


def test_stop_cuts_a_realtime_wait_short() -> None:
    stop = threading.Event()
    messages = requests(CONFIG, b"\0" * 64000, 32000, realtime_rate_bytes_per_s=32000, stop=stop)
    next(messages)
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert list(messages) == []
    assert time.monotonic() - start < 0.5


# --- Renderer -----------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _partial(finalized: str, draft: str) -> pb.StreamingTranscribeResponse:
    return pb.StreamingTranscribeResponse(finalized_text=finalized, draft_text=draft)


def _final(text: str) -> pb.StreamingTranscribeResponse:
    return pb.StreamingTranscribeResponse(
        is_final=True, finalized_text=text, transcript=pb.Transcript(text=text)
    )


def test_renderer_on_a_terminal_rewrites_one_line_with_the_draft_dimmed() -> None:
    out = FakeTerminal()
    renderer = Renderer(out, width=80)
    renderer.update(_partial("", "hello"))
    renderer.update(_partial("Hello", " wor"))
    assert out.getvalue() == "\r\x1b[2mhello\x1b[0m\x1b[K\rHello\x1b[2m wor\x1b[0m\x1b[K"
    renderer.finish(_final("Hello world."))
    assert out.getvalue().endswith("\r\x1b[KHello world.\n")


def test_renderer_moves_long_finalized_text_above_the_live_line() -> None:
    out = FakeTerminal()
    renderer = Renderer(out, width=30)
    words = " ".join(f"word{i}" for i in range(30))
    for n in range(1, 31):
        renderer.update(_partial(" ".join(words.split()[:n]), " draft" * 10))
    screen = out.getvalue()
    finished = [line for line in screen.split("\n")[:-1]]
    assert finished, "finalized text past the width goes to lines of its own"
    for line in finished:
        text = line.rsplit("\r", 1)[-1].removesuffix("\x1b[K")
        assert len(text) <= 29
    live = screen.rsplit("\r", 1)[-1]
    visible = live.replace("\x1b[2m", "").replace("\x1b[0m", "").replace("\x1b[K", "")
    assert len(visible) <= 29
    assert "…" in visible  # the draft's tail
    # Everything printed above the live line plus the live finalized part is the whole text.
    printed = [line.rsplit("\r", 1)[-1].removesuffix("\x1b[K") for line in finished]
    assert " ".join([*printed, live.split("\x1b[2m")[0]]) == words
    renderer.finish(_final(words))
    assert out.getvalue().endswith("\x1b[1A\x1b[2K" * len(finished) + words + "\n")


def test_renderer_off_a_terminal_prints_only_the_final_transcript() -> None:
    out = io.StringIO()
    renderer = Renderer(out)
    renderer.update(_partial("Hello", " wor"))
    assert out.getvalue() == ""
    renderer.finish(_final("Hello world."))
    assert out.getvalue() == "Hello world.\n"


def test_renderer_off_a_terminal_with_interim_prints_a_line_per_response() -> None:
    out = io.StringIO()
    renderer = Renderer(out, interim=True)
    renderer.update(_partial("", "hello"))
    renderer.update(_partial("Hello", " wor"))
    renderer.finish(_final("Hello world."))
    assert out.getvalue() == "[draft] hello\n[draft] Hello wor\n[final] Hello world.\n"


def test_renderer_close_ends_the_live_line() -> None:
    out = FakeTerminal()
    renderer = Renderer(out, width=80)
    renderer.close()
    assert out.getvalue() == ""
    renderer.update(_partial("Hel", "lo"))
    renderer.close()
    assert out.getvalue().endswith("\n")


# --- --mic without sounddevice ------------------------------------------------------------------


def test_mic_without_sounddevice_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` fail
    assert cli.main(["--server", "127.0.0.1:1", "stream", "--mic"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"parakeet-client: {MIC_INSTALL_HINT}\n"
    assert "pip install 'parakeet-client[mic]'" in captured.err
    assert "libportaudio2" in captured.err


# --- a file without the audio extra -------------------------------------------------------------


def test_file_without_the_audio_extra_exits_2_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], audio: Path
) -> None:
    # What a bare `pip install parakeet-client` sees: no soundfile, so no parakeet_client.audio.
    monkeypatch.delitem(sys.modules, "parakeet_client.audio", raising=False)
    monkeypatch.setitem(sys.modules, "soundfile", None)
    assert cli.main(["--server", "127.0.0.1:1", "stream", str(audio / "mono.wav")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"parakeet-client: {cli.AUDIO_INSTALL_HINT} (")
    assert "pip install 'parakeet-client[audio]'" in captured.err
    assert "soundfile" in captured.err


# --- the stream command against a fake server ---------------------------------------------------


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


FINAL = pb.StreamingTranscribeResponse(
    is_final=True,
    finalized_text="Hello streaming world.",
    audio_processed_seconds=1.5,
    transcript=pb.Transcript(
        text="Hello streaming world.",
        segments=[
            pb.Segment(
                text="Hello streaming world.",
                start_time=_duration(0.1),
                end_time=_duration(1.4),
                words=[
                    pb.Word(text=w, start_time=_duration(s), end_time=_duration(e), confidence=c)
                    for w, s, e, c in [
                        ("Hello", 0.1, 0.4, 0.9),
                        ("streaming", 0.5, 1.0, 0.8),
                        ("world.", 1.1, 1.4, 0.7),
                    ]
                ],
            )
        ],
    ),
    metrics=pb.RequestMetrics(
        audio_seconds=1.5,
        processing_seconds=0.3,
        real_time_factor=0.2,
        word_count=3,
        words_per_second=10.0,
        milliseconds_per_word=100.0,
    ),
    finalization_latency_seconds=0.25,
)


class FakeStreamingService(pb_grpc.TranscriptionServiceServicer):
    """Checks the config comes first, keeps the audio, answers two partials and a final."""

    def __init__(self) -> None:
        self.refusal: str | None = None  # set: abort with INVALID_ARGUMENT after the config
        self.config: pb.StreamingConfig | None = None
        self.audio = bytearray()
        self.chunks = 0
        self.configured = threading.Event()

    def StreamingTranscribe(
        self,
        request_iterator: Iterator[pb.StreamingTranscribeRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.StreamingTranscribeResponse]:
        first = next(request_iterator)
        if first.WhichOneof("request") != "config":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a config")
        self.config = first.config
        self.configured.set()
        if self.refusal is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refusal)
        for request in request_iterator:
            if request.WhichOneof("request") != "audio":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a second config")
            self.audio += request.audio
            self.chunks += 1
            if self.chunks == 1:
                yield pb.StreamingTranscribeResponse(finalized_text="", draft_text="Hello")
        yield pb.StreamingTranscribeResponse(finalized_text="Hello", draft_text=" streaming wor")
        yield FINAL


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeStreamingService]]:
    service = FakeStreamingService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_TranscriptionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", service
    finally:
        server.stop(None).wait()


def test_stream_command_prints_the_final_transcript_and_perf(
    fake_server: tuple[str, FakeStreamingService], audio: Path
) -> None:
    address, service = fake_server
    result = subprocess.run(
        [sys.executable, "-m", "parakeet_client", "--server", address, "stream",
         str(audio / "stereo.wav"), "--mode", "full-context"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello streaming world.\n"
    assert result.stderr == (
        "PERF audio=1.50s words=3 time=0.300s rtf=0.200 wps=10.0 ms_per_word=100.0 "
        "finalization_latency=0.250s\n"
    )
    pcm, _, _ = read_pcm(audio / "stereo.wav")
    assert bytes(service.audio) == pcm.tobytes()
    assert service.config == pb.StreamingConfig(
        format=pb.AudioFormat(
            encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=44100, channel_count=2
        ),
        interim_results=True,
        options=pb.TranscriptionOptions(),
        finalization_mode=pb.FINALIZATION_MODE_FULL_CONTEXT,
    )
    # 100 ms of 44.1 kHz stereo per message.
    assert service.chunks == -(-len(pcm) // (4410 * 2))


def test_stream_interim_and_words(
    fake_server: tuple[str, FakeStreamingService],
    audio: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, service = fake_server
    argv = ["--server", address, "stream", str(audio / "mono.wav"), "--interim", "--words"]
    assert cli.main([*argv, "--chunk-ms", "250", "--mode", "streaming"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "[draft] Hello",
        "[draft] Hello streaming wor",
        "[final] Hello streaming world.",
    ]
    assert [line.split() for line in out[3:]] == [
        ["0.10", "0.40", "0.90", "Hello"],
        ["0.50", "1.00", "0.80", "streaming"],
        ["1.10", "1.40", "0.70", "world."],
    ]
    assert service.config is not None
    assert service.config.options.word_timestamps
    assert service.config.finalization_mode == pb.FINALIZATION_MODE_STREAMING
    pcm, _, _ = read_pcm(audio / "mono.wav")
    assert service.chunks == -(-len(pcm) // 4000)


def test_stream_json_prints_only_the_final_response(
    fake_server: tuple[str, FakeStreamingService],
    audio: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, service = fake_server
    argv = ["--server", address, "stream", str(audio / "stereo.m4a"), "--json", "--no-interim"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    response = json.loads(captured.out)
    assert response["isFinal"] is True
    assert response["transcript"]["text"] == "Hello streaming world."
    assert response["finalizationLatencySeconds"] == 0.25
    assert captured.err == ""
    assert service.config is not None
    assert not service.config.interim_results
    assert service.config.format.sample_rate_hertz == 48000


def test_ctrl_c_ends_a_realtime_stream_early_and_still_prints_the_final(
    fake_server: tuple[str, FakeStreamingService], tmp_path: Path
) -> None:
    address, service = fake_server
    long = tmp_path / "silence.wav"
    sf.write(long, np.zeros(16000 * 20, np.int16), 16000)  # 20 s, sent in real time
    process = subprocess.Popen(
        [sys.executable, "-m", "parakeet_client", "--server", address, "stream", str(long),
         "--realtime"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert service.configured.wait(30)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert stdout == "Hello streaming world.\n"
    assert "finalization_latency=0.250s" in stderr
    assert 0 < len(service.audio) < 16000 * 2 * 5


def test_stream_errors_are_described_like_the_other_commands(
    unused_port: int, audio: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["--server", f"127.0.0.1:{unused_port}", "stream", str(audio / "mono.wav")]) == 3
    )
    assert "cannot reach parakeet-server" in capsys.readouterr().err


def test_stream_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--server", "127.0.0.1:1", "stream", str(tmp_path / "nope.wav")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_stream_refused_by_the_server_exits_1_with_its_message(
    fake_server: tuple[str, FakeStreamingService],
    audio: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, service = fake_server
    service.refusal = "sample rate 44100 Hz is not supported"
    assert cli.main(["--server", address, "stream", str(audio / "mono.wav")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "parakeet-client: INVALID_ARGUMENT: sample rate 44100 Hz is not supported\n"
    )


def test_stream_chunk_ms_must_be_positive(audio: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--server", "127.0.0.1:1", "stream", str(audio / "mono.wav"), "--chunk-ms", "0"]
    assert cli.main(argv) == 2
    assert "--chunk-ms must be positive" in capsys.readouterr().err


class FakeRawInputStream:
    """sounddevice.RawInputStream delivering 100 ms blocks of a ramp every 10 ms from a thread."""

    def __init__(self, *, samplerate: int, channels: int, dtype: str, blocksize: int,
                 callback: Any) -> None:  # fmt: skip
        assert (samplerate, channels, dtype, blocksize) == (16000, 1, "int16", 1600)
        self._callback = callback
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._record)
        self.blocks = 0

    def _record(self) -> None:
        while self._running.is_set():
            block = np.full(1600, self.blocks, np.int16)
            self._callback(memoryview(block.tobytes()), 1600, None, None)
            self.blocks += 1
            time.sleep(0.01)

    def start(self) -> None:
        self._running.set()
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        self._thread.join()

    def close(self) -> None:
        pass


def test_mic_streams_until_ctrl_c_then_prints_the_final(
    fake_server: tuple[str, FakeStreamingService],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, service = fake_server
    sounddevice = ModuleType("sounddevice")
    sounddevice.RawInputStream = FakeRawInputStream  # type: ignore[attr-defined]
    sounddevice.PortAudioError = OSError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sounddevice", sounddevice)

    def press_ctrl_c() -> None:
        assert service.configured.wait(30)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        assert cli.main(["--server", address, "stream", "--mic"]) == 0
    finally:
        presser.join()
    captured = capsys.readouterr()
    assert captured.out == "Hello streaming world.\n"
    assert "listening" in captured.err
    assert service.config is not None
    assert service.config.format.sample_rate_hertz == 16000
    assert service.config.format.channel_count == 1
    # Whole blocks, in order, none lost.
    blocks = np.frombuffer(bytes(service.audio), np.int16).reshape(-1, 1600)
    assert len(blocks) >= 2
    np.testing.assert_array_equal(blocks[:, 0], np.arange(len(blocks)))
