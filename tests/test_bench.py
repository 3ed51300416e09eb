"""Each benchmark in bench/ runs for a few seconds on the tiny model and prints its table.

A smoke test of their plumbing (servers started, calls made, figures gathered, tables printed),
not of speed: the sizes are the smallest that still fill every row, and no figure is checked.
The benches cache their random checkpoint under $XDG_CACHE_HOME; here that is a directory of
this session holding the tests' own tiny TDT checkpoint, so nothing is written to $HOME.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# script, its arguments, and a pattern per line the output must contain (in order).
CASES = {
    "transcribe": (
        ["--lengths", "1.5", "--repeats", "1", "--cli-max-seconds", "0"],
        [
            r"^model: tiny \(tdt-tiny\), float32",
            r"^\| audio \| path \| time \| RTF \| overhead vs floor \|$",
            r"^\| 1\.5 s \| floor: generate on mel \| [0-9.]+ s \| [0-9.]+ \|  \|$",
            r"^\| 1\.5 s \| server: Transcribe, cold \| [0-9.]+ s \| [0-9.]+ \| [-+0-9.]+ ms",
            r"^\| 1\.5 s \| server: Transcribe, warm \(cache hit\), in the server \|",
            r"^target warm-cache hit < 5 ms at every length: worst [0-9.]+ ms",
        ],
    ),
    "streaming": (
        ["--lengths", "2", "--block-ms", "320"],
        [
            r"^model: tiny; block 320 ms",
            r"^\| utterance \| STREAMING \| FULL_CONTEXT \| sequential",
            r"^\| 2 s \| [0-9.]+ s \| [0-9.]+ s \| [0-9.]+ s \|$",
            r"^per-block processing time over 2 s \(\d+ blocks of 320 ms\)$",
            r"^\| [0-9.]+ s \| [0-9.]+ s \| [0-9.]+ s \| [0-9.]+ s \| [0-9.]+ \|$",
        ],
    ),
    "capacity": (
        [
            "--streams",
            "1",
            "--seconds",
            "1.5",
            "--clients",
            "2",
            "--config",
            "one=--max-batch-size 8",
        ],
        [
            r"^\| config \| streams \| worst partial lag \| final after half-close",
            r"^\| one \| 1 \| [0-9.]+ s \| [0-9.]+ / [0-9.]+ s \| \d+ \|$",
            r"^\| one \| one-shot: 2 x 5 s at once [0-9.]+ s, one after another [0-9.]+ s \| "
            r"throughput x[0-9.]+",
        ],
    ),
    "encoder": (
        ["--size", "tiny", "--repeats", "1", "--profile", "--profile-seconds", "2"],
        [
            r"^encoder bench: .*tdt-tiny, 2 layers, d_model 96",
            r"^audio batch  stock s stock/1t  fast s fast/stock fast/1t fast/item max diff$",
            r"^   2s     8 +[0-9.]+ ",
            r"^  12s     1 +[0-9.]+ ",
            r"^profile: 2 s of audio, batch 1, 2 layers",
            r"^attention +[0-9.]+ +[0-9.]+ +[0-9.]+x$",
            r"^fast: parts sum [0-9.]+ s, whole encoder [0-9.]+ s$",
        ],
    ),
    "soak": (
        [
            *("--minutes", "0.1", "--phase-seconds", "3", "--warmup-seconds", "1"),
            *("--max-growth-mb", "1000", "--tracemalloc", "2"),
            *("--unary", "1", "--long", "1", "--realtime-streams", "0", "--fast-streams", "1"),
        ],
        [
            r"^soak: 0\.1 min in phases of 3 s after a 1 s warm-up, tiny model, 3 client "
            r"threads \(think 0 s\), caches off, tracemalloc 2 frames$",
            r"^Transcribe +\d+ +0 +[0-9.]+s +[0-9.]+s  whole call$",
            r"^TranscribeLong +\d+ +0 ",
            r"^Stream fast +\d+ +0 ",
            r"^errors by status: none$",
            r"^\| min \| server rss \| server heap \|",
            r"^\| 0\.0 \| [0-9.]+ \| [0-9.]+ \|",
            r"^from the first quiescent point to the last \(MB\): server\.resident [-+][0-9.]+",
            r"^verdict: server \+ worker resident at quiescent points [0-9.]+ -> [0-9.]+ MB",
            r"^server exit code 0, tracebacks in log 0",
        ],
    ),
}


@pytest.fixture(scope="module")
def bench_cache(tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An $XDG_CACHE_HOME whose bench checkpoint (tdt-tiny) is the tests' tiny TDT one."""
    home = tmp_path_factory.mktemp("xdg-cache")
    cached = home / "parakeet-server" / "bench" / "tdt-tiny"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(tdt_checkpoint, target_is_directory=True)
    return home


@pytest.mark.parametrize("case", list(CASES))
def test_bench_runs_and_prints_its_table(case: str, bench_cache: Path) -> None:
    arguments, lines = CASES[case]
    script = ROOT / "bench" / f"{case}.py"
    paths = [str(ROOT / "server"), str(ROOT / "client"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "XDG_CACHE_HOME": str(bench_cache), "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [sys.executable, str(script), *arguments],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    output = result.stdout
    left = re.search(r", log (/\S+)/server\.log$", output, re.M)  # soak keeps its server's log
    if left and Path(left.group(1)).name.startswith("parakeet-soak-"):
        shutil.rmtree(left.group(1))
    assert result.returncode == 0, result.stdout + result.stderr
    at = 0
    for pattern in lines:
        found = re.compile(pattern, re.M).search(output, at)
        assert found, f"no line matching {pattern!r} after what came before in:\n{output}"
        at = found.end()
