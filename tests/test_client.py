"""parakeet-client against a real server, as a person runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from parakeet_client.cli import build_parser
from parakeet_client.phrases import DEFAULT_BOOST, parse_phrase, phrases_of
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.testing.launcher import RunningServer


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parakeet_client", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_transcribe_prints_text_and_perf(server: RunningServer, speech_dir: Path) -> None:
    result = _client("--server", server.address, "transcribe", str(speech_dir / "speech.m4a"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stderr.startswith("PERF audio=")
    assert "rtf=" in result.stderr
    assert "wps=" in result.stderr


def test_transcribe_words_prints_one_line_per_word(server: RunningServer, speech_dir: Path) -> None:
    result = _client(
        "--server", server.address, "transcribe", "--words", str(speech_dir / "speech.wav")
    )
    assert result.returncode == 0, result.stderr
    text, *word_lines = result.stdout.strip().splitlines()
    assert len(word_lines) == len(text.split())
    for line, word in zip(word_lines, text.split(), strict=True):
        start, end, confidence, printed = line.split()
        assert float(start) <= float(end)
        assert 0 <= float(confidence) <= 1
        assert printed == word


def test_transcribe_json_is_the_response(server: RunningServer, speech_dir: Path) -> None:
    result = _client(
        "--server", server.address, "transcribe", "--json", str(speech_dir / "speech.flac")
    )
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["transcript"]["text"]
    assert response["transcript"]["segments"][0]["words"]
    assert response["metrics"]["audioSeconds"] > 1
    assert response["requestId"]


def test_raw_pcm_file(server: RunningServer, speech_dir: Path) -> None:
    wav = _client("--server", server.address, "transcribe", str(speech_dir / "speech.wav"))
    raw = _client(
        "--server",
        server.address,
        "transcribe",
        str(speech_dir / "speech.s16le"),
        "--encoding",
        "linear16",
        "--sample-rate",
        "16000",
    )
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == wav.stdout


def test_info_shows_the_model(server: RunningServer) -> None:
    result = _client("--server", server.address, "info")
    assert result.returncode == 0, result.stderr
    assert "kind            tdt" in result.stdout
    assert "warm            yes" in result.stdout


def test_invalid_audio_is_reported_not_raised(server: RunningServer, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"nonsense" * 64)
    result = _client("--server", server.address, "transcribe", str(garbage))
    assert result.returncode == 1
    assert result.stderr.startswith("parakeet-client: INVALID_ARGUMENT:")
    assert "Traceback" not in result.stderr


def test_server_down_is_a_clear_message(unused_port: int, speech_dir: Path) -> None:
    result = _client(
        "--server", f"127.0.0.1:{unused_port}", "transcribe", str(speech_dir / "speech.wav")
    )
    assert result.returncode == 3
    assert "cannot reach parakeet-server" in result.stderr
    assert "Is it running?" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_message(server: RunningServer, tmp_path: Path) -> None:
    result = _client("--server", server.address, "transcribe", str(tmp_path / "nope.wav"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_stream_full_context_prints_what_transcribe_prints(
    server: RunningServer, speech_dir: Path
) -> None:
    wav = str(speech_dir / "speech.wav")
    unary = _client("--server", server.address, "transcribe", wav)
    streamed = _client("--server", server.address, "stream", wav, "--mode", "full-context")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == unary.stdout
    assert "finalization_latency=" in streamed.stderr


def test_stream_realtime_takes_as_long_as_the_audio(
    server: RunningServer, speech_dir: Path
) -> None:
    import time

    wav = speech_dir / "speech.wav"
    duration = soundfile.info(str(wav)).duration
    started = time.monotonic()
    result = _client(
        "--server",
        server.address,
        "stream",
        str(wav),
        "--realtime",
        "--mode",
        "streaming",
        "--interim",
        "--chunk-ms",
        "200",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed >= duration * 0.95
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("[final] ")
    assert any(line.startswith("[draft] ") for line in lines[:-1])


@pytest.mark.parametrize(
    ("value", "text", "boost"),
    [
        ("Kubernetes", "Kubernetes", DEFAULT_BOOST),
        ("Dr. Okonkwo:12.5", "Dr. Okonkwo", 12.5),
        ("new york : 3", "new york", 3.0),
        ("Re:Invent", "Re:Invent", DEFAULT_BOOST),  # not a number after the colon: text
        ("10:30:20", "10:30", 20.0),
    ],
)
def test_a_phrase_flag_is_text_and_an_optional_boost(value: str, text: str, boost: float) -> None:
    assert parse_phrase(value) == pb.Phrase(text=text, boost=boost)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ok:0", "in (0, 20]"),
        ("ok:21", "in (0, 20]"),
        ("ok:nan", "in (0, 20]"),
        (":5", "no text"),
        (" ", "empty"),
    ],
)
def test_a_bad_phrase_flag_says_why(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_phrase(value)


def test_phrase_flags_and_file_are_sent_and_a_bad_one_is_a_usage_error(
    server: RunningServer, speech_dir: Path, tmp_path: Path
) -> None:
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("# team names\n\nbe:5\nok\n")
    args = build_parser().parse_args(
        ["transcribe", "--phrase", "ab:20", "--phrases-file", str(phrases), "x.wav"]
    )
    assert phrases_of(args) == [
        pb.Phrase(text="ab", boost=20),
        pb.Phrase(text="be", boost=5),
        pb.Phrase(text="ok", boost=DEFAULT_BOOST),
    ]
    wav = str(speech_dir / "speech.wav")
    # A phrase the model cannot spell: the server's refusal proves the phrases reach it.
    for command in ("transcribe", "stream"):
        result = _client("--server", server.address, command, "--phrase", "route 66", wav)
        assert result.returncode == 1, result.stderr
        assert "INVALID_ARGUMENT" in result.stderr
        assert "'route 66'" in result.stderr
    phrases.write_text("ok\nnope:99\n")
    result = _client("--server", server.address, "transcribe", "--phrases-file", str(phrases), wav)
    assert result.returncode == 2
    assert f"{phrases}:2: phrase 'nope:99'" in result.stderr
