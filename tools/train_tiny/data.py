"""Synthesises the training and held-out sets with espeak-ng: random word sequences, many voices.

Held-out clips use voice variants and speaking rates that never occur in training, so the
held-out WER measures generalisation to new voices, not memory of the training voices.

    python tools/train_tiny/data.py OUT_DIR [--train 9000] [--heldout 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vocab

RATE = 16000
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# "" is the accent's own voice; the rest are espeak-ng's voice variants (+name).
TRAIN_VARIANTS = (
    "",
    "m1",
    "m2",
    "m4",
    "m5",
    "m6",
    "m8",
    "f1",
    "f3",
    "f4",
    "klatt",
    "klatt4",
    "iven",
    "john",
    "paul",
    "linda",
    "david",
    "max",
    "Andy",
    "edward",
)
HELDOUT_VARIANTS = ("m3", "m7", "f2", "f5", "klatt2", "iven2", "Alex", "michel")
TRAIN_SPEEDS = tuple(range(120, 241, 10))  # words per minute
HELDOUT_SPEEDS = (135, 155, 175, 195, 215)  # between the training rates, never one of them
SETS = ("train", "heldout")  # what build() writes and load() reads


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    speed: int
    pitch: int
    gap: int  # extra pause between words, in 10 ms units


def plan(count: int, *, heldout: bool, seed: int) -> list[Utterance]:
    """`count` random utterances of 1-20 words; a pure function of the seed."""
    rng = np.random.default_rng([seed, 1 if heldout else 0])
    words = vocab.words()
    variants = HELDOUT_VARIANTS if heldout else TRAIN_VARIANTS
    speeds = HELDOUT_SPEEDS if heldout else TRAIN_SPEEDS
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 21))
        text = " ".join(words[i] for i in rng.integers(0, len(words), n))
        variant = variants[int(rng.integers(len(variants)))]
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        voice = accent + ("+" + variant if variant else "")
        gap = int(rng.choice([0, 0, 0, 1, 2, 5]))
        out.append(Utterance(text, voice, int(rng.choice(speeds)), int(rng.integers(20, 81)), gap))
    return out


def synthesise(utt: Utterance) -> np.ndarray:
    """The utterance spoken by espeak-ng, 16 kHz mono int16."""
    import soundfile
    import soxr

    cmd = [
        "espeak-ng",
        "-v",
        utt.voice,
        "-s",
        str(utt.speed),
        "-p",
        str(utt.pitch),
        "-g",
        str(utt.gap),
        "--stdout",
        vocab.spoken(utt.text),
    ]
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    samples = soxr.resample(samples, rate, RATE)
    return np.asarray(np.clip(samples, -1, 1) * 32767, dtype=np.int16)


def _nice() -> None:
    os.nice(19)


def build(out: Path, utterances: list[Utterance], name: str, workers: int = 2) -> None:
    """Writes `name`.npz (int16 samples concatenated + offsets) and `name`.jsonl (metadata)."""
    with ProcessPoolExecutor(workers, initializer=_nice) as pool:
        clips = list(pool.map(synthesise, utterances, chunksize=32))
    offsets = np.cumsum([0] + [c.size for c in clips])
    np.savez(out / f"{name}.npz", samples=np.concatenate(clips), offsets=offsets)
    with (out / f"{name}.jsonl").open("w") as f:
        for utt in utterances:
            f.write(json.dumps(asdict(utt)) + "\n")
    hours = offsets[-1] / RATE / 3600
    print(f"{name}: {len(clips)} clips, {hours:.2f} h of audio", flush=True)


def load(out: Path, name: str) -> tuple[list[np.ndarray], list[Utterance]]:
    """The clips and utterances of one of the SETS that `build` wrote."""
    if name not in SETS:
        # The untouched evaluation set (untouched.py) is never a file here: nothing that
        # trains can read it.
        raise ValueError(f"data.py writes the sets {SETS}, not {name!r}")
    data = np.load(out / f"{name}.npz")
    samples, offsets = data["samples"], data["offsets"]
    clips = [samples[a:b] for a, b in itertools.pairwise(offsets)]
    with (out / f"{name}.jsonl").open() as f:
        utts = [Utterance(**json.loads(line)) for line in f]
    return clips, utts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=9000)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, plan(args.heldout, heldout=True, seed=args.seed), "heldout")
    build(args.out, plan(args.train, heldout=False, seed=args.seed), "train")


if __name__ == "__main__":
    main()
