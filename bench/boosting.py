"""Phrase boosting: what it recovers, what it adds, and what it costs.

    python bench/boosting.py accuracy [--clips 80] [--boosts 2 5 10 15 20]
    python bench/boosting.py speed [--phrases 100] [--repeats 5]

accuracy: the trained checkpoint (tests/models/tiny-ctc-espeak) on `--clips` random sentences
of its vocabulary spoken by espeak-ng in held-out voices and rates (tools/train_tiny/data.py),
through the server's own engine, greedy. For each boost, three lists of phrases per clip:

- missed: the words of the sentence the model got wrong unboosted: how many of those reference
  words come back right (recovered), and how many words right before go wrong (broken);
- absent: 5 vocabulary words that are not in the sentence (nor in its unboosted transcript):
  how often one appears anyway (false alarms per 100 spoken words);
- list of 100: the missed words among 100 vocabulary words, the way a user's list of names
  holds a few that are said: recovered and false alarms together.

speed: the time to transcribe clips with no phrases and with `--phrases` phrases (vocabulary
words and pairs of them), in this process, runs interleaved, best of --repeats (CPU time: what
other processes add to it is noise, and the least of many runs is the cost): the whole
transcription, and the decoder alone on the same encoder output (stock parakeet-mlx decoding
against the boosted one). On the trained CTC checkpoint and on a full-size random TDT (8192
tokens, ~/.cache/parakeet-server/bench/tdt-full, made by bench/common.py on first use).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "train_tiny"))

import data as dataset  # noqa: E402
from common import checkpoint  # noqa: E402

from parakeet_server.domain import Phrase, TranscriptionOptions  # noqa: E402
from parakeet_server.engine.boosting import ContextGraph  # noqa: E402
from parakeet_server.engine.runtime import use_fast_blas  # noqa: E402

TRAINED = ROOT / "tests" / "models" / "tiny-ctc-espeak"
RATE = 16000
ABSENT_PER_CLIP = 5
LIST_SIZE = 100


def words(text: str) -> list[str]:
    return text.lower().replace(",", " ").replace(".", " ").split()


def hits(reference: list[str], hypothesis: list[str]) -> list[bool]:
    """For each reference word: whether the alignment (jiwer's) has it right."""
    import jiwer

    right = [False] * len(reference)
    if not reference:
        return right
    alignment = jiwer.process_words(" ".join(reference), " ".join(hypothesis) or "-")
    for piece in alignment.alignments[0]:
        if piece.type == "equal":
            for i in range(piece.ref_start_idx, piece.ref_end_idx):
                right[i] = True
    return right


@dataclass
class Tally:
    missed: int = 0  # reference words wrong unboosted, over the clips boosted
    recovered: int = 0
    broken: int = 0  # reference words right unboosted, wrong boosted
    spoken: int = 0  # reference words in all
    false_alarms: int = 0  # phrases not spoken that appear in the transcript
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)

    def wer(self) -> float:
        import jiwer

        return float(jiwer.wer(self.refs, self.hyps))


def accuracy(args: argparse.Namespace) -> None:
    from parakeet_server.engine.model import ParakeetEngine

    engine = ParakeetEngine.load(str(TRAINED))
    vocabulary = (TRAINED / "words.txt").read_text().split()
    utterances = [
        u for u in dataset.plan(args.clips * 2, heldout=True, seed=args.seed) if u.text.count(" ")
    ][: args.clips]
    rng = np.random.default_rng(args.seed)
    clips = []
    for utterance in utterances:
        samples = dataset.synthesise(utterance).astype(np.float32) / 32768
        reference = utterance.text.split()
        plain = words(engine.transcribe(samples, TranscriptionOptions()).text)
        right = hits(reference, plain)
        missed = sorted({w for w, ok in zip(reference, right, strict=True) if not ok})
        others = [w for w in vocabulary if w not in reference and w not in plain]
        absent = [str(w) for w in rng.choice(others, ABSENT_PER_CLIP, replace=False)]
        listed = missed + [
            str(w) for w in rng.choice(others, LIST_SIZE - len(missed), replace=False)
        ]
        clips.append((samples, reference, plain, right, missed, absent, listed))
    spoken = sum(len(c[1]) for c in clips)
    baseline = Tally(refs=[" ".join(c[1]) for c in clips], hyps=[" ".join(c[2]) for c in clips])
    print(
        f"{len(clips)} clips, {spoken} words, held-out voices; unboosted WER "
        f"{baseline.wer():.1%}, {sum(not ok for c in clips for ok in c[3])} words wrong\n"
    )
    print(
        "| boost | missed: recovered | broken | WER | absent: false alarms / 100 words | WER "
        "| list of 100: recovered | false alarms / 100 words | WER |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for boost in args.boosts:
        tallies = {name: Tally() for name in ("missed", "absent", "list")}
        for samples, reference, plain, right, missed, absent, listed in clips:
            for name, chosen in (("missed", missed), ("absent", absent), ("list", listed)):
                tally = tallies[name]
                phrases = tuple(Phrase(w, boost) for w in chosen)
                hypothesis = (
                    words(engine.transcribe(samples, TranscriptionOptions(phrases=phrases)).text)
                    if phrases
                    else plain
                )
                now = hits(reference, hypothesis)
                tally.spoken += len(reference)
                tally.missed += sum(not ok for ok in right)
                tally.recovered += sum(now[i] and not right[i] for i in range(len(reference)))
                tally.broken += sum(right[i] and not now[i] for i in range(len(reference)))
                unspoken = set(chosen) - set(reference)
                tally.false_alarms += sum(1 for w in hypothesis if w in unspoken) - sum(
                    1 for w in plain if w in unspoken
                )
                tally.refs.append(" ".join(reference))
                tally.hyps.append(" ".join(hypothesis))
        fix, add, mixed = tallies["missed"], tallies["absent"], tallies["list"]
        print(
            f"| {boost:g} | {fix.recovered}/{fix.missed} "
            f"({fix.recovered / max(1, fix.missed):.0%}) | {fix.broken} | {fix.wer():.1%} "
            f"| {100 * add.false_alarms / add.spoken:.2f} | {add.wer():.1%} "
            f"| {mixed.recovered}/{mixed.missed} "
            f"({mixed.recovered / max(1, mixed.missed):.0%}) "
            f"| {100 * mixed.false_alarms / mixed.spoken:.2f} | {mixed.wer():.1%} |"
        )
    engine.close()


def _seconds(run: Callable[[], object]) -> float:
    """CPU seconds `run` takes in this process (all its threads): other processes on a shared
    machine slow the wall clock, much less this."""
    started = time.process_time()
    run()
    return time.process_time() - started


def speed(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    utterances = [
        u for u in dataset.plan(40, heldout=True, seed=args.seed) if u.text.count(" ") > 5
    ]
    speech = [dataset.synthesise(u).astype(np.float32) / 32768 for u in utterances[: args.clips]]
    print(
        f"{args.phrases} phrases (half words, half pairs of words); {len(speech)} clips, "
        f"{sum(s.size for s in speech) / RATE:.0f} s of speech; CPU seconds of this process, "
        f"best of {args.repeats} runs taken in turns\n"
    )
    print("| model | what | no phrases | with phrases | extra |")
    print("|---|---|---|---|---|")
    vocabulary = (TRAINED / "words.txt").read_text().split()
    # The trained model on real speech, with a boost that changes words (as in use).
    texts = _phrase_texts(args.phrases, lambda: str(rng.choice(vocabulary)))
    _time_model(args, "tiny-ctc-espeak", TRAINED, speech, tuple(Phrase(t, 8.0) for t in texts))
    if not args.skip_full:
        # A random model: any real boost would change its (random) output and so its work;
        # a boost too small to change a decision times the fusion's own work alone.
        letters = list("abcdefghijklmnopqrstuvwxyz")
        texts = _phrase_texts(
            args.phrases, lambda: "".join(rng.choice(letters, int(rng.integers(2, 6))))
        )
        _time_model(
            args,
            "tdt full (random, 8192 tokens)",
            checkpoint("full"),
            speech[:2],
            tuple(Phrase(t, 0.01) for t in texts),
        )


def _phrase_texts(count: int, word: Callable[[], str]) -> list[str]:
    half = count // 2
    return [word() for _ in range(half)] + [f"{word()} {word()}" for _ in range(count - half)]


def _time_model(
    args: argparse.Namespace,
    name: str,
    path: Path,
    clips: list[np.ndarray],
    phrases: tuple[Phrase, ...],
) -> None:
    import mlx.core as mx
    from parakeet_mlx import DecodingConfig

    from parakeet_server.engine.model import ParakeetEngine

    engine = ParakeetEngine.load(str(path))
    graph = engine.context_graph(phrases)
    config = DecodingConfig()
    encoded = []
    for samples in clips:
        mel = engine._mels([samples])[0].astype(getattr(mx, engine.info.dtype))
        features, lengths = engine._model.encoder(mel)
        mx.eval(features, lengths)
        encoded.append((features, lengths))

    def transcribe_all(options: TranscriptionOptions) -> None:
        for samples in clips:
            engine.transcribe(samples, options)

    def decode_stock() -> None:
        for features, lengths in encoded:
            engine._model.decode(features, lengths, config=config)

    def decode_own(with_graph: ContextGraph | None) -> list[list[int]]:
        return [
            [t.id for t in engine._decode_boosted(features, int(lengths[0]), config, with_graph)]
            for features, lengths in encoded
        ]

    same = decode_own(None) == decode_own(graph)
    # (what, no phrases, with phrases): each pair timed in turns, so that a busy moment of a
    # shared machine falls on both sides alike.
    pairs: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "transcribe",
            lambda: transcribe_all(TranscriptionOptions()),
            lambda: transcribe_all(TranscriptionOptions(phrases=phrases)),
        ),
        ("decoder: parakeet-mlx's / boosted", decode_stock, lambda: decode_own(graph)),
        (
            "decoder: the fusion's own cost" + ("" if same else " (words differ)"),
            lambda: decode_own(None),
            lambda: decode_own(graph),
        ),
    ]
    for what, without, with_phrases in pairs:
        without(), with_phrases()  # warm-up
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(args.repeats):
            times[0].append(_seconds(without))
            times[1].append(_seconds(with_phrases))
        a, b = min(times[0]), min(times[1])
        print(f"| {name} | {what} | {a * 1000:.1f} ms | {b * 1000:.1f} ms | {(b - a) / a:+.1%} |")
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    acc = commands.add_parser("accuracy")
    acc.add_argument("--clips", type=int, default=80)
    acc.add_argument("--boosts", type=float, nargs="+", default=[2, 5, 10, 15, 20])
    acc.add_argument("--seed", type=int, default=14)
    fast = commands.add_parser("speed")
    fast.add_argument("--phrases", type=int, default=100)
    fast.add_argument("--clips", type=int, default=8)
    fast.add_argument("--repeats", type=int, default=5)
    fast.add_argument("--seed", type=int, default=14)
    fast.add_argument("--skip-full", action="store_true", help="only the trained CTC checkpoint")
    args = parser.parse_args()
    use_fast_blas()
    try:
        accuracy(args) if args.command == "accuracy" else speed(args)
    finally:
        import mlx.core as mx

        mx.clear_streams()


if __name__ == "__main__":
    main()
