"""Word error rate of a checkpoint on an evaluation set, through the server's own engine.

Unary is `ParakeetEngine.transcribe`; STREAMING is the live-stream path the server runs
(`open_stream`, `stream_block` per message, `stream_finish`) with the server's default block
schedule. Clean audio, no augmentation.

This file evaluates the held-out set of `data.py` (voices and rates training never saw, but the
set that steered the recipe: a tuning-set figure) and writes eval.json next to the checkpoint;
`untouched.py` evaluates the untouched set with the same `evaluate` and writes untouched.json.

    python tools/train_tiny/evaluate.py MODEL_DIR [--data DATA_DIR]

Without --data the held-out clips are synthesised again from their plan (seed 0): the same
clips `data.py` writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as dataset  # noqa: E402

# The first clips of a set, as tests/test_trained_model.py replays them through the server.
TEST_CLIPS = 32
HELDOUT_SEED = 0  # the data.py seed of the committed checkpoint's sets


def synthesise(utterances: Sequence[dataset.Utterance], workers: int = 2) -> list[np.ndarray]:
    """The clips as float32 at 16 kHz, spoken exactly as data.py speaks its sets."""
    with ProcessPoolExecutor(workers, initializer=dataset._nice) as pool:
        clips = list(pool.map(dataset.synthesise, utterances, chunksize=8))
    return [clip.astype(np.float32) / 32768 for clip in clips]


def server_schedule(engine: Any) -> Any:
    """The block schedule the server gives a stream by default (config.py's flags)."""
    from parakeet_server.pipeline.live import StreamPolicy

    return StreamPolicy().schedule(engine.info.frame_seconds)


def streamed(engine: Any, samples: np.ndarray, schedule: Any, message: int = 3200) -> str:
    """The STREAMING final of `samples` sent in `message`-sample pieces, through the engine
    calls the server makes for a live stream."""
    from parakeet_server.domain import TranscriptionOptions

    session = engine.open_stream(schedule)
    for start in range(0, samples.size, message):
        engine.stream_block(session, samples[start : start + message])
    _, result = engine.stream_finish(session, np.zeros(0, np.float32), TranscriptionOptions())
    return " ".join(str(result.committed_text).split())


PITCH_BANDS = ("0-19", "20-80", "81-99")  # training draws espeak-ng pitches 20-80


def pitch_band(pitch: int) -> str:
    return PITCH_BANDS[0] if pitch < 20 else PITCH_BANDS[1] if pitch <= 80 else PITCH_BANDS[2]


def variant_of(utt: dataset.Utterance) -> str:
    return utt.voice.split("+")[1] if "+" in utt.voice else "-"


def wer_report(refs: list[str], hyps: list[str], utts: list[dataset.Utterance]) -> dict[str, Any]:
    """WER over everything, by voice variant, by speaking rate and by pitch band."""
    import jiwer

    def wer(indices: list[int]) -> float:
        return round(float(jiwer.wer([refs[i] for i in indices], [hyps[i] for i in indices])), 4)

    by_variant: dict[str, list[int]] = defaultdict(list)
    by_speed: dict[int, list[int]] = defaultdict(list)
    by_pitch: dict[str, list[int]] = defaultdict(list)
    for i, utt in enumerate(utts):
        by_variant[variant_of(utt)].append(i)
        by_speed[utt.speed].append(i)
        by_pitch[pitch_band(utt.pitch)].append(i)
    return {
        "wer": wer(list(range(len(refs)))),
        "by_variant": {
            k: wer(v) for k, v in sorted(by_variant.items(), key=lambda kv: kv[0].lower())
        },
        "by_speed": {str(k): wer(v) for k, v in sorted(by_speed.items())},
        "by_pitch": {k: wer(by_pitch[k]) for k in PITCH_BANDS if k in by_pitch},
    }


def evaluate(
    engine: Any,
    clips: list[np.ndarray],
    utts: list[dataset.Utterance],
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Unary and STREAMING WER of the clips, whole and on the first TEST_CLIPS."""
    from parakeet_server.domain import TranscriptionOptions

    schedule = server_schedule(engine)
    refs = [utt.text for utt in utts]
    unary, streaming = [], []
    for i, samples in enumerate(clips):
        unary.append(" ".join(engine.transcribe(samples, TranscriptionOptions()).text.split()))
        streaming.append(streamed(engine, samples, schedule))
        if (i + 1) % 50 == 0:
            progress(f"{i + 1} of {len(clips)} clips")
    head = min(TEST_CLIPS, len(clips))
    whole = wer_report(refs, unary, utts)
    return {
        "clips": len(clips),
        "words": sum(len(r.split()) for r in refs),
        **whole,
        "streaming": wer_report(refs, streaming, utts),
        "variants": sorted({variant_of(u) for u in utts}, key=str.lower),
        "speeds": sorted({u.speed for u in utts}),
        "pitches": [min(u.pitch for u in utts), max(u.pitch for u in utts)],
        "test_subset": {
            "clips": head,
            "words": sum(len(r.split()) for r in refs[:head]),
            "unary": wer_report(refs[:head], unary[:head], utts[:head])["wer"],
            "streaming": wer_report(refs[:head], streaming[:head], utts[:head])["wer"],
        },
        "schedule": {
            "block_frames": schedule.block_frames,
            "lookahead_frames": schedule.lookahead_frames,
            "left_context_frames": schedule.left_context_frames,
        },
        "examples": [
            {
                "ref": refs[i],
                "hyp": unary[i],
                "streaming": streaming[i],
                "voice": utts[i].voice,
                "speed": utts[i].speed,
                "pitch": utts[i].pitch,
            }
            for i in range(min(8, len(refs)))
        ],
    }


def run(model: Path, clips: list[np.ndarray], utts: list[dataset.Utterance]) -> dict[str, Any]:
    """Loads the checkpoint as the server does and evaluates the clips."""
    from parakeet_server.engine.model import ParakeetEngine
    from parakeet_server.engine.runtime import use_fast_blas

    use_fast_blas()
    engine = ParakeetEngine.load(str(model.resolve()))
    try:
        return evaluate(engine, clips, utts, progress=print)
    finally:
        engine.close()


def summary(result: dict[str, Any]) -> str:
    keys = ("clips", "words", "wer", "test_subset")
    brief = {k: result[k] for k in keys} | {"streaming": result["streaming"]["wer"]}
    return json.dumps(brief, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, help="a data.py output folder (its heldout clips)")
    parser.add_argument("--clips", type=int, default=300)
    args = parser.parse_args()
    if args.data:
        int16, utts = dataset.load(args.data, "heldout")
        clips = [clip.astype(np.float32) / 32768 for clip in int16]
    else:
        utts = dataset.plan(args.clips, heldout=True, seed=HELDOUT_SEED)
        clips = synthesise(utts)
    result = run(args.model, clips[: args.clips], utts[: args.clips])
    (args.model / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))


if __name__ == "__main__":
    main()
