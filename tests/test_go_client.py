"""The example Go client (client/go), built with the Go toolchain, against the real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from google.protobuf import json_format

from conftest import transcribe
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing.launcher import RunningServer

GO = shutil.which("go")
GO_MODULE = Path(__file__).resolve().parent.parent / "client" / "go"
pytestmark = pytest.mark.skipif(
    GO is None, reason="the Go toolchain (`go`) is not installed; CI has it"
)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def _go(*args: str, cwd: Path = GO_MODULE, timeout: float = 600) -> None:
    result = subprocess.run(
        [str(GO), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`parakeet-stream`, built from this checkout into a temporary directory."""
    binary = tmp_path_factory.mktemp("go") / "parakeet-stream"
    _go("build", "-buildvcs=false", "-o", str(binary), "./cmd/parakeet-stream")
    return binary


def _run(client: Path, *args: str, timeout: float = 300) -> Run:
    result = subprocess.run([str(client), *args], capture_output=True, text=True, timeout=timeout)
    return Run(result.returncode, result.stdout, result.stderr)


def _stream_json(
    client: Path, server: RunningServer, wav: Path, *flags: str
) -> list[dict[str, Any]]:
    run = _run(client, "-server", server.address, "-json", *flags, str(wav))
    assert run.returncode == 0, run.stderr
    lines = run.lines()
    assert [line["type"] for line in lines].count("final") == 1
    assert lines[-1]["type"] == "final"
    assert all(line["type"] == "partial" for line in lines[:-1])
    return lines


def _unary(server: RunningServer, wav: Path) -> pb.TranscribeResponse:
    """Python's Transcribe of the same samples, sent as raw LINEAR16 like the stream."""
    samples, rate = soundfile.read(wav, dtype="int16", always_2d=True)
    return transcribe(
        server.stub(),
        samples.tobytes(),
        encoding=pb.AudioFormat.ENCODING_LINEAR16,
        sample_rate=rate,
        channels=samples.shape[1],
        word_timestamps=True,
    )


def test_go_unit_tests_pass() -> None:
    _go("vet", "./...")
    _go("test", "./...")


@pytest.mark.parametrize("name", ["speech.wav", "speech_stereo.wav"])
def test_full_context_final_equals_python_transcribe(
    go_client: Path, server: RunningServer, speech_dir: Path, name: str
) -> None:
    wav = speech_dir / name
    lines = _stream_json(go_client, server, wav, "-mode", "full-context", "-chunk-ms", "80")
    final = lines[-1]
    unary = _unary(server, wav)
    transcript = json_format.ParseDict(final["transcript"], pb.Transcript())
    assert transcript == unary.transcript
    assert final["text"] == unary.transcript.text
    info = soundfile.info(wav)
    assert final["metrics"]["audio_seconds"] == pytest.approx(info.duration, abs=1e-3)
    assert final["metrics"]["word_count"] == unary.metrics.word_count


def test_streaming_mode_prints_growing_partials_then_metrics(
    go_client: Path, server: RunningServer, speech_dir: Path
) -> None:
    wav = speech_dir / "speech_44100.wav"
    lines = _stream_json(go_client, server, wav, "-mode", "streaming", "-chunk-ms", "50")
    partials, final = lines[:-1], lines[-1]
    assert partials, "no partial results"
    finalized, processed = "", 0.0
    for line in lines:
        if line["type"] == "partial":
            assert line["finalized_text"].startswith(finalized), "finalized text was rewritten"
            finalized = line["finalized_text"]
        assert line["audio_processed_seconds"] >= processed
        processed = line["audio_processed_seconds"]
    assert any(p["draft_text"] or p["finalized_text"] for p in partials)
    duration = soundfile.info(wav).duration
    assert final["audio_processed_seconds"] == pytest.approx(duration, abs=1e-3)
    metrics = final["metrics"]
    assert metrics["audio_seconds"] == pytest.approx(duration, abs=1e-3)
    assert metrics["processing_seconds"] > 0
    assert metrics["real_time_factor"] > 0
    assert metrics["word_count"] == len(final["text"].split())
    assert final["finalization_latency_seconds"] > 0
    assert final["text"].startswith(finalized)


def test_realtime_pacing_and_text_output_give_the_same_final(
    go_client: Path, server: RunningServer, speech_dir: Path
) -> None:
    wav = speech_dir / "speech.wav"
    fast = _stream_json(go_client, server, wav, "-mode", "streaming")[-1]
    paced = _run(
        go_client, "-server", server.address, "-mode", "streaming", "-realtime", "-chunk-ms",
        "250", str(wav),
    )  # fmt: skip
    assert paced.returncode == 0, paced.stderr
    *partials, text = paced.stdout.splitlines()
    assert text == fast["text"]
    assert partials
    assert all(line.startswith("[") for line in partials)
    assert paced.stderr.startswith("PERF audio=")
    assert "finalization_latency=" in paced.stderr


def test_unreachable_server_exits_3_with_a_message(
    go_client: Path, speech_dir: Path, unused_port: int
) -> None:
    run = _run(go_client, "-server", f"127.0.0.1:{unused_port}", str(speech_dir / "speech.wav"))
    assert run.returncode == 3
    assert "unavailable" in run.stderr
    assert f"127.0.0.1:{unused_port}" in run.stderr
    assert not run.stdout


@pytest.mark.parametrize("name", ["speech.mp3", "speech.s16le"])
def test_a_file_that_is_not_wav_exits_2_with_a_message(
    go_client: Path, server: RunningServer, speech_dir: Path, name: str
) -> None:
    run = _run(go_client, "-server", server.address, str(speech_dir / name))
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        == f"parakeet-stream: {speech_dir / name}: not a WAV file: no RIFF/WAVE header"
    )


def test_a_refused_stream_exits_1_with_the_servers_status(
    go_client: Path, server: RunningServer, tmp_path: Path
) -> None:
    wav = tmp_path / "three-channels.wav"
    soundfile.write(wav, np.zeros((16000, 3), dtype=np.int16), 16000, subtype="PCM_16")
    run = _run(go_client, "-server", server.address, str(wav))
    assert run.returncode == 1
    assert run.stderr.startswith("parakeet-stream: INVALID_ARGUMENT: "), run.stderr


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sentences the trained checkpoint knows, each followed by a 2 s pause."""
    from test_trained_model import synthesise, wav_bytes

    pause = np.zeros(32000, np.float32)
    clips = [
        synthesise("alfa bravo charlie delta echo", "en-us+m3", 155),
        synthesise("victor whiskey xray yankee zulu", "en-us+m7", 195),
    ]
    path = tmp_path_factory.mktemp("go-endpointing") / "two.wav"
    path.write_bytes(wav_bytes(np.concatenate([clips[0], pause, clips[1], pause])))
    return path


def test_endpointing_prints_each_utterance_and_single_utterance_stops_after_one(
    go_client: Path, trained_server: RunningServer, two_sentences: Path
) -> None:
    run = _run(go_client, "-server", trained_server.address, "-json", "-mode", "streaming",
               "-endpointing", str(two_sentences))  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.lines()
    utterances = [line for line in lines if line["type"] == "utterance"]
    assert [(u["index"], u["speech_event"], u["end_reason"]) for u in utterances] == [
        (0, "end_of_utterance", "silence"),
        (1, "end_of_utterance", "silence"),
    ]
    assert utterances[0]["audio_end_seconds"] <= utterances[1]["audio_start_seconds"]
    assert [line.get("speech_event") for line in lines if line["type"] == "partial"].count(
        "speech_begin"
    ) == 2
    assert lines[-1]["type"] == "final"
    assert lines[-1]["text"] == " ".join(u["text"] for u in utterances)
    single = _run(go_client, "-server", trained_server.address, "-mode", "streaming",
                  "-single-utterance", "-interim=false", str(two_sentences))  # fmt: skip
    assert single.returncode == 0, single.stderr
    *_, shown, final = single.stdout.splitlines()  # after the SPEECH_BEGIN event's line
    assert shown.startswith("[utterance 0 ")
    assert shown.endswith(f"] {utterances[0]['text']}")
    assert final == utterances[0]["text"]
    refused = _run(go_client, "-server", trained_server.address, "-endpointing",
                   "-trailing-silence", "50ms", str(two_sentences))  # fmt: skip
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "endpointing.trailing_silence" in refused.stderr


def test_phrases_reach_the_server_and_a_bad_boost_is_a_usage_error(
    go_client: Path, server: RunningServer, speech_dir: Path, tmp_path: Path
) -> None:
    wav = str(speech_dir / "speech.wav")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("# names\nab:20\n")
    boosted = _stream_json(
        go_client, server, speech_dir / "speech.wav", "-phrases-file", str(phrases)
    )
    plain = _stream_json(go_client, server, speech_dir / "speech.wav")
    assert "ab" in boosted[-1]["text"].split()
    assert "ab" not in plain[-1]["text"].split()
    # What the model cannot spell is refused by the server, naming the phrase.
    run = _run(go_client, "-server", server.address, "-phrase", "ok", "-phrase", "route 66", wav)
    assert run.returncode == 1
    assert "INVALID_ARGUMENT" in run.stderr
    assert "'route 66'" in run.stderr
    run = _run(go_client, "-server", server.address, "-phrase", "ok:0", wav)
    assert run.returncode == 2
    assert "the boost must be in (0, 20]" in run.stderr
