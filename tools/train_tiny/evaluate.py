"""Held-out word error rate of a checkpoint, through the server's own engine (ParakeetEngine).

The held-out clips use voice variants and speaking rates that training never saw, and clean
audio (no augmentation). Writes eval.json next to the checkpoint.

    python tools/train_tiny/evaluate.py DATA_DIR MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("model", type=Path)
    args = parser.parse_args()

    import jiwer

    from parakeet_server.domain import TranscriptionOptions
    from parakeet_server.engine.model import ParakeetEngine

    engine = ParakeetEngine.load(str(args.model.resolve()))
    clips, utts = dataset.load(args.data, "heldout")
    refs, hyps = [], []
    by_variant: dict[str, list[int]] = defaultdict(list)
    by_speed: dict[int, list[int]] = defaultdict(list)
    for i, (clip, utt) in enumerate(zip(clips, utts, strict=True)):
        samples = clip.astype(np.float32) / 32768
        hyps.append(" ".join(engine.transcribe(samples, TranscriptionOptions()).text.split()))
        refs.append(utt.text)
        by_variant[utt.voice.split("+")[1] if "+" in utt.voice else "-"].append(i)
        by_speed[utt.speed].append(i)

    def wer(indices: list[int]) -> float:
        return float(jiwer.wer([refs[i] for i in indices], [hyps[i] for i in indices]))

    everything = list(range(len(refs)))
    result = {
        "clips": len(refs),
        "words": sum(len(r.split()) for r in refs),
        "wer": wer(everything),
        "by_variant": {k: round(wer(v), 4) for k, v in sorted(by_variant.items())},
        "by_speed": {str(k): round(wer(v), 4) for k, v in sorted(by_speed.items())},
        "variants": sorted({u.voice.split("+")[1] for u in utts if "+" in u.voice}),
        "speeds": sorted({u.speed for u in utts}),
        "examples": [
            {"ref": refs[i], "hyp": hyps[i], "voice": utts[i].voice, "speed": utts[i].speed}
            for i in range(8)
        ],
    }
    (args.model / "eval.json").write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {k: result[k] for k in ("clips", "words", "wer", "by_variant", "by_speed")}, indent=1
        )
    )
    engine.close()


if __name__ == "__main__":
    main()
