"""The untouched evaluation set: voices, intonations and rates that nothing was ever tuned on.

The held-out set of `data.py` steered the recipe (learning rate, curriculum, steps, joins were
chosen on it), so its WER is a tuning-set figure. This set is the second, honest one: espeak-ng
voice variants, pitches, speaking rates and word gaps that occur in neither the training nor the
held-out lists, drawn from its own fixed seed (`SEED`). Its clips are synthesised in memory when
evaluated and never written where training reads: `train.py` and `data.py` do not import this
module, and `data.load` reads only the training and held-out files
(`tests/test_train_tiny.py` checks both). Nothing may be chosen by looking at its figures
(`train.py` has no option that reads it); report them, do not tune on them.

espeak-ng has eight English accents and training already speaks in all of them, so what is new
here besides the voices is intonation and stress: variants such as pablo and pedro (espeak's
intonation 3), Marco (intonation 1 with its own stress timing) and the Portuguese-style stress
of Diogo and Henrique.

    python tools/train_tiny/untouched.py MODEL_DIR            # writes MODEL_DIR/untouched.json
    python tools/train_tiny/untouched.py MODEL_DIR --clips 48 --no-write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as dataset  # noqa: E402
import evaluate  # noqa: E402
import vocab  # noqa: E402

SEED = 15  # fixed: the set is the same clips for every checkpoint
CLIPS = 300
# espeak-ng voice variants in neither data.TRAIN_VARIANTS nor data.HELDOUT_VARIANTS. Left out:
# whispered, echoing, robotic and croaking variants (caleb, whisper*, RicishayMax*, robosoft*,
# UniRobot, anikaRobot, announcer, Demonic, croak) and fast_test.
VARIANTS = (
    "adam",
    "Annie",
    "antonio",
    "belinda",
    "benjamin",
    "Denis",
    "Diogo",
    "Gene",
    "Henrique",
    "Jacky",
    "klatt3",
    "klatt6",
    "Lee",
    "Marco",
    "Mike",
    "pablo",
    "pedro",
    "quincy",
    "steph",
    "travis",
)
# Words per minute in neither data.TRAIN_SPEEDS nor data.HELDOUT_SPEEDS: two below the training
# range, four between its steps, two above it.
SPEEDS = (100, 110, 128, 147, 163, 184, 252, 265)
# espeak-ng pitch 0-99; training and held-out draw 20-80.
PITCHES = tuple(range(5, 20)) + tuple(range(81, 96))
GAPS = (0, 0, 3, 4, 8)  # extra pause between words, 10 ms units; training draws 0, 1, 2 and 5


def plan(count: int = CLIPS, seed: int = SEED) -> list[dataset.Utterance]:
    """`count` random utterances of 1-20 words; the first n are plan(n)'s (a prefix is a subset)."""
    rng = np.random.default_rng([seed, 2])  # data.plan draws [seed, 0] and [seed, 1]
    words = vocab.words()
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 21))
        text = " ".join(words[i] for i in rng.integers(0, len(words), n))
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
        accent = dataset.ACCENTS[int(rng.integers(len(dataset.ACCENTS)))]
        speed = int(rng.choice(SPEEDS))
        pitch = int(rng.choice(PITCHES))
        gap = int(rng.choice(GAPS))
        out.append(dataset.Utterance(text, f"{accent}+{variant}", speed, pitch, gap))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--clips", type=int, default=CLIPS)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the json")
    args = parser.parse_args()
    utts = plan(args.clips)
    result = {"seed": SEED} | evaluate.run(args.model, evaluate.synthesise(utts), utts)
    if not args.no_write:
        (args.model / "untouched.json").write_text(json.dumps(result, indent=1) + "\n")
    print(evaluate.summary(result))


if __name__ == "__main__":
    main()
