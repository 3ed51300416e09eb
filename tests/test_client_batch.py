"""`parakeet-client transcribe FILE_OR_DIR... --jobs N`: many files over a pool of real servers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from parakeet_client.batch import BatchSettings, collect, output_paths, retryable, run_batch
from parakeet_client.formats import Cue, timestamp, to_srt, to_vtt
from parakeet_server.testing.launcher import RunningServer, start_server


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parakeet_client", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def peer(tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A second server beside the shared one: the pool."""
    running = start_server(tdt_checkpoint, tmp_path_factory.mktemp("peer"))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def recordings(speech_dir: Path, tmp_path: Path) -> Path:
    """Six recordings in a folder (one in a subfolder), and a file that is not audio."""
    folder = tmp_path / "recordings"
    (folder / "day2").mkdir(parents=True)
    for name in ("a.wav", "b.flac", "c.m4a", "d.mp3"):
        shutil.copy(speech_dir / f"speech{Path(name).suffix}", folder / name)
    shutil.copy(speech_dir / "speech_8000.wav", folder / "e_8000.wav")
    shutil.copy(speech_dir / "speech_stereo.wav", folder / "day2" / "stereo.wav")
    (folder / "broken.wav").write_bytes(b"not audio " * 100)
    (folder / "notes.txt").write_text("not audio, and not taken from a directory")
    return folder


def _served(server: RunningServer) -> int:
    return len(re.findall(r"PERF .* rpc=TranscribeLong ", server.log()))


def test_a_folder_over_two_servers_writes_every_format_then_resumes(
    server: RunningServer, peer: RunningServer, recordings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pool = f"{server.address},{peer.address}"
    before = _served(server), _served(peer)
    args = ("--server", pool, "transcribe", str(recordings), "--jobs", "3")
    first = _client(*args, "--output-dir", str(out), "--output-format", "all", "--progress")
    assert first.returncode == 1, first.stderr
    assert "7 files: 6 transcribed, 0 skipped (output exists), 1 failed" in first.stderr
    assert re.search(r"failed: \S*broken\.wav: INVALID_ARGUMENT: ", first.stderr)
    assert re.search(r"\] 100% 7/7 files", first.stderr)
    served = _served(server) - before[0], _served(peer) - before[1]
    assert sum(served) == 6  # the broken file has no PERF line
    assert min(served) >= 1, served  # round_robin: both servers took files

    stems = ["a", "b", "c", "d", "e_8000", "stereo"]
    for fmt in ("txt", "srt", "vtt", "json"):
        assert sorted(p.stem for p in out.glob(f"*.{fmt}")) == stems
    single = _client("--server", server.address, "transcribe", str(recordings / "a.wav"))
    assert (out / "a.txt").read_text() == single.stdout
    srt = (out / "stereo.srt").read_text()
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt)
    assert (out / "stereo.vtt").read_text().startswith("WEBVTT\n\n")
    document = json.loads((out / "stereo.json").read_text())
    assert document["sentences"][0]["words"]
    assert " ".join(s["text"] for s in document["sentences"]) == document["text"]

    # One name per input, next to each file this time; what exists is skipped on the rerun.
    named = ("--output-format", "txt", "--output-template", "{filename}_{index}")
    (recordings / "broken.wav").unlink()
    second = _client(*args, *named)
    assert second.returncode == 0, second.stderr
    assert "6 files: 6 transcribed, 0 skipped" in second.stderr
    assert (recordings / "a_1.txt").read_text() == single.stdout
    assert (recordings / "day2" / "stereo_5.txt").exists()
    served_before_rerun = _served(server) + _served(peer)
    third = _client(*args, *named)
    assert third.returncode == 0, third.stderr
    assert "6 files: 0 transcribed, 6 skipped" in third.stderr
    assert _served(server) + _served(peer) == served_before_rerun


def test_a_dead_server_in_the_list_is_left_out(
    server: RunningServer, recordings: Path, unused_port: int, tmp_path: Path
) -> None:
    result = _client(
        "--server",
        f"127.0.0.1:{unused_port},{server.address}",
        "transcribe",
        str(recordings / "a.wav"),
        str(recordings / "b.flac"),
        "--output-dir",
        str(tmp_path),
        "--output-template",
        "{index}",
        "--output-format",
        "txt",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["1.txt", "2.txt"]


class _Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _RefusingFirst:
    """A real stub whose first calls are refused, as by a server that is loading or full."""

    def __init__(self, real: Any, refusals: list[_Refusal]) -> None:
        self._real = real
        self._refusals = refusals

    def TranscribeLong(self, request: Any, **kwargs: Any) -> Any:
        if self._refusals:
            raise self._refusals.pop(0)
        return self._real.TranscribeLong(request, **kwargs)


def test_unavailable_and_a_full_queue_are_retried_with_back_off(
    server: RunningServer, recordings: Path, tmp_path: Path
) -> None:
    refusals = [
        _Refusal(grpc.StatusCode.UNAVAILABLE, "the model is still loading"),
        _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "the model queue is full"),
    ]
    waits: list[float] = []
    settings = BatchSettings(formats=("txt",), output_dir=tmp_path, jobs=1, retries=2)
    stub: Any = _RefusingFirst(server.stub(), refusals)
    result = run_batch(stub, [recordings / "a.wav"], settings, None, sleep=waits.append)
    assert result.failures == []
    assert result.transcribed == 1
    assert result.retries == 2
    assert len(waits) == 2
    assert waits[1] > waits[0] * 0.5  # doubling, with jitter of +-50%
    assert (tmp_path / "a.txt").read_text().strip()

    refusals = [_Refusal(grpc.StatusCode.UNAVAILABLE, "down")] * 3
    stub = _RefusingFirst(server.stub(), refusals)
    gave_up = run_batch(stub, [recordings / "b.flac"], settings, None, sleep=waits.append)
    assert gave_up.failures == [(recordings / "b.flac", "UNAVAILABLE: down")]


def test_what_is_retried() -> None:
    assert retryable(_Refusal(grpc.StatusCode.UNAVAILABLE, "loading"))
    assert retryable(_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
    too_large = "the server's limit (--max-message-bytes) is 3000 bytes"
    assert not retryable(_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large))
    assert not retryable(_Refusal(grpc.StatusCode.INVALID_ARGUMENT, "not audio"))


def test_output_names_follow_the_parakeet_mlx_template(tmp_path: Path) -> None:
    audio = tmp_path / "in" / "talk.m4a"
    beside = output_paths(audio, 3, BatchSettings(formats=("srt", "txt")))
    assert beside == {"srt": audio.with_suffix(".srt"), "txt": audio.with_suffix(".txt")}
    settings = BatchSettings(output_dir=tmp_path / "out", template="{parent}/{filename}_{index}")
    assert (
        output_paths(audio, 3, settings)["srt"] == tmp_path / "out" / f"{audio.parent}/talk_3.srt"
    )


def test_a_directory_is_searched_for_audio_only(recordings: Path) -> None:
    found = collect([str(recordings), str(recordings / "notes.txt")])
    assert [p.relative_to(recordings).as_posix() for p in found] == [
        "a.wav",
        "b.flac",
        "broken.wav",
        "c.m4a",
        "d.mp3",
        "day2/stereo.wav",
        "e_8000.wav",
        "notes.txt",  # named, so taken
    ]


def test_two_inputs_writing_one_output_are_refused_before_any_call(
    unused_port: int, tmp_path: Path, speech_dir: Path
) -> None:
    (tmp_path / "x").mkdir()
    shutil.copy(speech_dir / "speech.wav", tmp_path / "x" / "speech.wav")
    result = _client(
        "--server",
        f"127.0.0.1:{unused_port}",
        "transcribe",
        str(speech_dir / "speech.wav"),
        str(tmp_path / "x" / "speech.wav"),
        "--output-dir",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert "would both write" in result.stderr
    assert "--output-template" in result.stderr


def test_subtitle_timestamps() -> None:
    assert timestamp(3661.5) == "01:01:01,500"
    assert timestamp(0.0004, decimal_marker=".") == "00:00:00.000"
    cues = [Cue("hello there", 0.12, 1.5), Cue("again", 2.0, 2.25)]
    assert to_srt(cues) == (
        "1\n00:00:00,120 --> 00:00:01,500\nhello there\n\n2\n00:00:02,000 --> 00:00:02,250\nagain\n"
    )
    assert to_vtt(cues).startswith("WEBVTT\n\n00:00:00.120 --> 00:00:01.500\nhello there\n\n")
