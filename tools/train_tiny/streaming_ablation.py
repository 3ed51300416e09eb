"""Where STREAMING finals lose words against unary: an ablation on the untouched set, in process.

Each row runs every clip through `engine.streaming.StreamingSession` (the server's streaming
encoder and decoder, opened with `ParakeetEngine.open_stream` as the server opens it) with one
thing changed: the normalisation statistics, the left context, the block size, the look-ahead,
or how the frames left at the end are committed. Blocks are fixed by audio position, so giving
a session the whole clip and then finishing it gives what a live stream of any message size
gets. Unary is `engine.transcribe`.

    python tools/train_tiny/streaming_ablation.py tests/models/tiny-ctc-espeak [--clips 300]
        [--rows default,whole-stats,...] [--frames N] [--long SECONDS ...]

`--frames N` adds, for the rows chosen, how often the streaming encoder's per-frame CTC choice
differs from the full-context one on the first N clips (frames where either says a word), by
the frame's place in its block and by how far into the stream its block is. `--long SECONDS`
adds unary against STREAMING (the default row) on recordings of about each length, each one
speaker saying the set's texts in turn with pauses: what AUTO finalization chooses between.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate  # also puts server/ on the path
import untouched

WHOLE = 10_000.0  # seconds: "everything" for a block or a left context


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    block: float = 1.28  # seconds, the server's defaults (config.py)
    lookahead: float = 0.64
    left: float = 10.0
    # "running": the server's (the frames up to each window's end); "whole": the utterance's
    # (an oracle: no live stream has them); a number: at least that many first seconds (a
    # warm-up: a live stream's first block would wait for them)
    stats: str = "running"
    tail: str = "one-step"  # the server's finish(); "blocks": as it was before issue 15

    @property
    def work(self) -> float:
        """Encoder frames per committed frame in a long stream: (block + look-ahead) / block,
        what a step's cost grows with (attention also grows with the left context)."""
        return (self.block + self.lookahead) / self.block if self.block < WHOLE else 1.0


ROWS = [
    Row(
        "before",
        "frames after the last full block committed block by block, no look-ahead",
        tail="blocks",
    ),
    Row("default", "the server's defaults: the rest committed in one step"),
    Row("whole-stats", "normalised with the whole utterance's statistics (oracle)", stats="whole"),
    Row("warmup-3", "normalised with at least the first 3 s", stats="3"),
    Row("left-all", "left context unlimited", left=WHOLE),
    Row("left-2.56", "left context 2.56 s", left=2.56),
    Row("look-0", "no look-ahead", lookahead=0.0),
    Row("look-0.32", "look-ahead 0.32 s", lookahead=0.32),
    Row("look-1.28", "look-ahead 1.28 s", lookahead=1.28),
    Row("look-2.56", "look-ahead 2.56 s", lookahead=2.56),
    Row("block-0.64", "block 0.64 s", block=0.64),
    Row("block-2.56", "block 2.56 s", block=2.56),
    Row("block-2.56+look-1.28", "block 2.56 s, look-ahead 1.28 s", block=2.56, lookahead=1.28),
    Row(
        "whole-stats+look-2.56",
        "whole statistics, look-ahead 2.56 s, left unlimited",
        stats="whole",
        lookahead=2.56,
        left=WHOLE,
    ),
    Row(
        "one-block",
        "whole statistics, one block of everything (= unary)",
        stats="whole",
        block=WHOLE,
        lookahead=0.0,
        left=WHOLE,
    ),
]


def schedule_of(row: Row, frame_seconds: float) -> Any:
    from parakeet_server.domain import BlockSchedule

    return BlockSchedule(
        block_frames=max(1, round(row.block / frame_seconds)),
        lookahead_frames=round(row.lookahead / frame_seconds),
        left_context_frames=max(1, round(row.left / frame_seconds)),
    )


@dataclass
class Steps:
    """What a session's steps encoded: (first frame, committed frames' CTC choices)."""

    argmax: Any = None  # the model's decoder as a function, set when choices are wanted
    choices: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def __call__(self, x: Any, start: int, end: int) -> None:
        if self.argmax is not None:
            self.choices.append((start, self.argmax(x[:, : end - start])))


def open_session(engine: Any, row: Row, samples: np.ndarray, steps: Steps) -> Any:
    """A session as the server opens it, with this row's schedule, statistics and tail."""
    from parakeet_server.engine.features import RunningNormaliser, StreamingFeatures

    session = engine.open_stream(schedule_of(row, engine.info.frame_seconds))
    if row.stats == "whole":
        preprocessor = engine._model.preprocessor_config
        features = StreamingFeatures(preprocessor)
        raw = np.concatenate([np.array(features.accept(samples)), np.array(features.finish())])
        whole = RunningNormaliser(preprocessor.features)
        whole.update(raw)
        session._normaliser = whole
        session._stats_end = 1 << 62  # never updated again
    elif row.stats != "running":
        _warm_up(session, round(float(row.stats) * 100))
    if row.tail == "blocks":
        session.finish = lambda: _finish_in_blocks(session)
    decode_step = session._decode_step

    def watched(x: Any, start: int, end: int, ahead: int) -> Any:
        steps(x, start, end)
        return decode_step(x, start, end, ahead)

    session._decode_step = watched
    return session


def _warm_up(session: Any, mel_frames: int) -> None:
    """Every window is normalised with at least the first `mel_frames` frames' statistics."""
    embed = session._embed

    def warmed(start: int, ahead: int) -> Any:
        target = min(mel_frames, session._mel_offset + session._mel.shape[0])
        if session._stats_end < target:
            offset = session._mel_offset
            fresh = session._mel[session._stats_end - offset : target - offset]
            session._normaliser.update(np.array(fresh))
            session._stats_end = target
        return embed(start, ahead)

    session._embed = warmed


def _finish_in_blocks(session: Any) -> None:
    """StreamingSession.finish as it was: the frames left after the last full block were
    committed block by block with no look-ahead."""
    session._finished = True
    session._append_mel(session._features.finish())
    total = math.ceil((session._mel_offset + session._mel.shape[0]) / session._subsampling)
    while session.pending_blocks():
        session.step()
    while session._committed_frames < total:
        end = min(session._committed_frames + session._settings.block_frames, total)
        session._encode_and_decode(session._committed_frames, end, end)
    session.draft = []


def streamed(engine: Any, row: Row, samples: np.ndarray, steps: Steps | None = None) -> str:
    """One clip's STREAMING final under `row`."""
    session = open_session(engine, row, samples, steps or Steps())
    session.accept(samples)
    session.finish()
    return " ".join(engine.text(session.tokens).split())


def frame_table(engine: Any, clips: list[np.ndarray], row: Row) -> dict[str, dict[str, float]]:
    """Per-frame disagreement of `row`'s CTC choice with the full-context one."""
    import mlx.core as mx

    model = engine._model
    blank = len(model.vocabulary)

    def argmax(x: Any) -> np.ndarray:
        return np.array(mx.argmax(model.decoder(x)[0], axis=-1))

    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    block = schedule_of(row, engine.info.frame_seconds).block_frames
    for samples in clips:
        full, mine = Steps(argmax), Steps(argmax)
        streamed(engine, ROWS[-1], samples, full)
        streamed(engine, row, samples, mine)
        reference = np.concatenate([chosen for _, chosen in full.choices])
        for start, chosen in mine.choices:
            index = start // block
            for offset, token in enumerate(chosen.tolist()):
                wanted = reference[start + offset]
                if token == blank and wanted == blank:
                    continue
                place = f"quarter {min(3, 4 * offset // block) + 1}"
                age = f"block {index + 1}" if index < 3 else "block 4+"
                for table, key in (("place in block", place), ("block of the stream", age)):
                    cell = counts[table][key]
                    cell[0] += int(token != wanted)
                    cell[1] += 1
    return {
        table: {k: round(bad / max(1, n), 4) for k, (bad, n) in sorted(cells.items())}
        for table, cells in counts.items()
    }


def joined(utts: list[Any], seconds: float, rate: int) -> tuple[list[np.ndarray], list[str]]:
    """Recordings of at least `seconds`, each one speaker: the planned utterances' texts in
    order, each spoken in the voice, rate, pitch and word gap of its recording's first one,
    with 0.3-0.9 s of faint noise between them (a last shorter recording is dropped)."""
    import data

    rng = np.random.default_rng(untouched.SEED)
    recordings, texts = [], []
    pieces: list[np.ndarray] = []
    words: list[str] = []
    speaker = utts[0]
    for utt in utts:
        if not pieces:
            speaker = utt
        spoken = data.synthesise(replace(speaker, text=utt.text)).astype(np.float32) / 32768
        pause = rng.normal(0, 0.002, int(rng.uniform(0.3, 0.9) * rate)).astype(np.float32)
        pieces += [spoken, pause]
        words.append(utt.text)
        if sum(p.size for p in pieces) >= seconds * rate:
            recordings.append(np.concatenate(pieces))
            texts.append(" ".join(words))
            pieces, words = [], []
    return recordings, texts


def _seconds(value: float) -> str:
    return "all" if value >= WHOLE else f"{value:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--clips", type=int, default=untouched.CLIPS)
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS))
    parser.add_argument("--frames", type=int, default=0, help="clips for the per-frame table")
    parser.add_argument(
        "--long", type=float, nargs="*", default=[], help="seconds per joined recording"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import jiwer

    from parakeet_server.domain import TranscriptionOptions
    from parakeet_server.engine.model import ParakeetEngine
    from parakeet_server.engine.runtime import use_fast_blas

    use_fast_blas()
    utts = untouched.plan(args.clips)
    clips = evaluate.synthesise(utts)
    refs = [u.text for u in utts]
    engine = ParakeetEngine.load(str(args.model.resolve()))
    rows = {r.name: r for r in ROWS}
    chosen = [rows[name] for name in args.rows.split(",") if name]

    def unary(samples: np.ndarray) -> str:
        return " ".join(engine.transcribe(samples, TranscriptionOptions()).text.split())

    def table(title: str, audio: list[np.ndarray], texts: list[str], which: list[Row]) -> Any:
        seconds = sum(s.size for s in audio) / engine.info.sample_rate
        words = sum(len(t.split()) for t in texts)
        base = float(jiwer.wer(texts, [unary(s) for s in audio]))
        print(f"\n{title}: {len(audio)} recordings, {words} words, {seconds:.0f} s")
        print("| row | change | block / look-ahead / left (s) | WER | vs unary | encoder work |")
        print("|---|---|---|---|---|---|")
        print(f"| unary | `engine.transcribe` | - | {100 * base:.1f}% | - | - |")
        out: dict[str, Any] = {"recordings": len(audio), "words": words, "unary": base}
        for row in which:
            wer = float(jiwer.wer(texts, [streamed(engine, row, s) for s in audio]))
            out[row.name] = wer
            print(
                f"| {row.name} | {row.what} | {_seconds(row.block)} / "
                f"{_seconds(row.lookahead)} / {_seconds(row.left)} | {100 * wer:.1f}% | "
                f"{100 * (wer - base):+.1f} | x{row.work / rows['default'].work:.2f} |",
                flush=True,
            )
        return out

    print(f"untouched set (seed {untouched.SEED}), first {len(clips)} clips")
    results: dict[str, Any] = {"clips": table("clips", clips, refs, chosen)}
    for seconds in args.long:
        recordings, texts = joined(utts, seconds, engine.info.sample_rate)
        title = f"joined into recordings of {seconds:g} s or more"
        results[f"long-{seconds:g}"] = table(title, recordings, texts, [rows["default"]])
    if args.frames:
        for row in chosen:
            if row.block >= WHOLE:
                continue
            frames = frame_table(engine, clips[: args.frames], row)
            results.setdefault("frames", {})[row.name] = frames
            print(f"\n{row.name}: frames whose CTC choice differs from full context")
            for kind, cells in frames.items():
                listed = ", ".join(f"{k} {100 * v:.1f}%" for k, v in cells.items())
                print(f"- by {kind}: {listed}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    engine.close()


if __name__ == "__main__":
    main()
