"""Writes the training card (CARD.md) and the loss curve (loss.png) next to a checkpoint.

python tools/train_tiny/card.py MODEL_DIR --command "the training command line"
python tools/train_tiny/card.py MODEL_DIR --evaluation-only

--evaluation-only rewrites only the card's evaluation and examples (between their <!-- -->
markers) from eval.json and untouched.json: after evaluate.py or untouched.py ran again on the
same checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vocab

# How far (in WER points) tests/test_trained_model.py lets a set's first clips, replayed
# through a real server, stray from the figure measured here.
TEST_MARGIN_POINTS = 2


def plot(phases: list[tuple[str, list[dict[str, float]]]], out: Path) -> None:
    """Training loss (per token, smoothed) and held-out WER of each phase, steps end to end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 3.5), dpi=90)
    wer_axis = loss_axis.twinx()
    offset: float = 0
    window = 25
    for (name, history), colour in zip(phases, ("#1f77b4", "#2ca02c"), strict=False):
        steps = [offset + h["step"] for h in history]
        losses = [h["loss"] for h in history]
        recent = [losses[max(0, i - window + 1) : i + 1] for i in range(len(losses))]
        smooth = [sum(r) / len(r) for r in recent]
        loss_axis.plot(steps, losses, color="#ccc", linewidth=0.5)
        loss_axis.plot(steps, smooth, color=colour, label=f"{name}: loss (mean of {window})")
        evals = [h for h in history if "val_wer" in h]
        wer_axis.plot(
            [offset + h["step"] for h in evals],
            [100 * h["val_wer"] for h in evals],
            "o:",
            color=colour,
            markersize=3,
        )
        if offset:
            loss_axis.axvline(offset, color="#999", linewidth=0.8)
        offset = steps[-1]
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step (letters phase, then words phase)")
    loss_axis.set_ylabel("training CTC loss per token")
    wer_axis.set_ylabel("WER on 60 held-out clips (%, dotted)")
    wer_axis.set_ylim(0, 105)
    loss_axis.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out)


MARKED = ("evaluation", "examples")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _by(report: dict[str, Any], streaming: dict[str, Any], key: str) -> str:
    return ", ".join(
        f"{k} {_percent(v)} ({_percent(streaming[key][k])})" for k, v in report[key].items()
    )


def evaluation(model: Path) -> str:
    """The card's evaluation: both sets, unary and STREAMING, and what the tests hold."""
    import untouched

    heldout = json.loads((model / "eval.json").read_text())
    fresh = json.loads((model / "untouched.json").read_text())
    schedule = fresh["schedule"]
    config = json.loads((model / "config.json").read_text())
    frame = config["preprocessor"]["window_stride"] * config["encoder"]["subsampling_factor"]

    def row(name: str, what: str, result: dict[str, Any]) -> str:
        return (
            f"| {name} | {what} | {result['clips']} ({result['words']}) | "
            f"{_percent(result['wer'])} | {_percent(result['streaming']['wer'])} |"
        )

    def breakdown(result: dict[str, Any]) -> str:
        streaming = result["streaming"]
        lines = [
            f"- by variant: {_by(result, streaming, 'by_variant')}",
            f"- by rate (words/min): {_by(result, streaming, 'by_speed')}",
        ]
        if len(result.get("by_pitch", {})) > 1:
            lines.append(f"- by espeak-ng pitch: {_by(result, streaming, 'by_pitch')}")
        return "\n".join(lines)

    def subset(result: dict[str, Any]) -> str:
        head = result["test_subset"]
        return (
            f"{_percent(head['unary'])} unary, {_percent(head['streaming'])} STREAMING on its "
            f"first {head['clips']} clips ({head['words']} words)"
        )

    variants = ", ".join(fresh["variants"])
    speeds = ", ".join(map(str, fresh["speeds"]))
    low, high = untouched.PITCHES[0], untouched.PITCHES[-1]
    block, ahead, left = (
        schedule[key] * frame for key in ("block_frames", "lookahead_frames", "left_context_frames")
    )
    tuned = (
        "voice variants and rates never in training, but the recipe (learning rate, "
        "curriculum, steps, joins) was chosen on these clips"
    )
    never = (
        f"seed {fresh['seed']}: voice variants, pitches and rates in neither training nor "
        "held-out; nothing was ever tuned on it (`untouched.py`)"
    )
    head = "<!-- evaluation: written by tools/train_tiny/card.py from eval.json, untouched.json -->"
    return f"""{head}
## Evaluation

Word error rate (jiwer) on clean espeak-ng speech of 1-20 random vocabulary words per clip,
through the server's own engine (`ParakeetEngine`): unary is `transcribe`, STREAMING is the
live-stream path (`open_stream`, `stream_block`, `stream_finish`) with the server's default
schedule ({block:g} s blocks, {ahead:g} s look-ahead, {left:g} s left context);
`tools/train_tiny/evaluate.py`.

| set | what it is | clips (words) | unary | STREAMING |
|---|---|---|---|---|
{row("held-out (tuning set)", tuned, heldout)}
{row("**untouched**", never, fresh)}

**Untouched WER: {_percent(fresh["wer"])} unary, {_percent(fresh["streaming"]["wer"])} STREAMING**
(`tools/train_tiny/untouched.py`, seed {fresh["seed"]}): the figure to quote. Voice variants
{variants}; rates {speeds} words/min (training speaks 120-240 in steps of 10, held-out
135-215); espeak-ng pitch {low}-19 and 81-{high} (both other sets 20-80); word gaps up to 80 ms.
espeak-ng has eight English accents and training speaks in all of them, so what is new here
besides the voices is intonation and stress (pablo and pedro: espeak's intonation 3; Marco:
intonation 1 and its own stress timing). Its clips are synthesised in memory when evaluated and
never written where `train.py` reads (`tests/test_train_tiny.py`). Unary (STREAMING):

{breakdown(fresh)}

Held-out (tuning set): {_percent(heldout["wer"])} unary, {_percent(heldout["streaming"]["wer"])}
STREAMING; voice variants {", ".join(heldout["variants"])}; rates
{", ".join(map(str, heldout["speeds"]))}:

{breakdown(heldout)}

`tests/test_trained_model.py` replays the first clips of both sets through a real server and
holds each figure within {TEST_MARGIN_POINTS} points of what was measured here: untouched
{subset(fresh)}; held-out {subset(heldout)}. Where STREAMING loses its words against unary:
`docs/streaming.md` (Accuracy), `tools/train_tiny/streaming_ablation.py`.
<!-- /evaluation -->"""


def examples_section(model: Path) -> str:
    fresh = json.loads((model / "untouched.json").read_text())
    lines = "\n".join(
        f"| {e['voice']} | {e['speed']} | {e['pitch']} | {e['ref']} | {e['hyp']} | "
        f"{e['streaming']} |"
        for e in fresh["examples"]
    )
    return f"""<!-- examples -->
## Examples (untouched set)
| voice | rate | pitch | spoken | unary | STREAMING |
|---|---|---|---|---|---|
{lines}
<!-- /examples -->"""


def refresh(model: Path) -> None:
    """Rewrites the card's marked sections only."""
    card = (model / "CARD.md").read_text()
    for name, text in zip(MARKED, (evaluation(model), examples_section(model)), strict=True):
        start = card.index(f"<!-- {name}")
        end = card.index(f"<!-- /{name} -->") + len(f"<!-- /{name} -->")
        card = card[:start] + text + card[end:]
    (model / "CARD.md").write_text(card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--evaluation-only", action="store_true")
    parser.add_argument("--command")
    parser.add_argument("--data-command")
    parser.add_argument("--letters", type=Path, help="the letters phase's checkpoint directory")
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    if args.evaluation_only:
        refresh(args.model)
        print(args.model / "CARD.md")
        return
    if not (args.command and args.data_command):
        parser.error("--command and --data-command are needed to write a whole card")
    history = json.loads((args.model / "history.json").read_text())
    config = json.loads((args.model / "config.json").read_text())
    phases = [("words", history)]
    if args.letters:
        phases.insert(0, ("letters", json.loads((args.letters / "history.json").read_text())))
    plot(phases, args.model / "loss.png")
    minutes = sum(phase[-1]["seconds"] for _, phase in phases) / 60
    steps = " + ".join(f"{phase[-1]['step']:.0f} ({name})" for name, phase in phases)
    encoder = config["encoder"]
    tail = history[-50:]
    pieces = config["decoder"]["vocabulary"]
    if len(pieces) == len(vocab.words()):
        tokens = 'one "▁word" piece per word'
    else:
        tokens = f'{len(pieces)} letter pieces (word-initial "▁a".."▁z" and inner "a".."z")'
    card = f"""# tiny-ctc-espeak: a small Parakeet CTC model for {len(vocab.words())} words

A parakeet-mlx `ParakeetCTC` ({encoder["n_layers"]} conformer layers, d_model {encoder["d_model"]},
{encoder["n_heads"]} heads, dw_striding subsampling x{encoder["subsampling_factor"]} with
{encoder["subsampling_conv_channels"]} channels, 80 mel features) trained from scratch on CPU with
MLX on speech synthesised by espeak-ng. Its tokens are {tokens}; it was trained on random
sequences of a closed list of words — the digits, the NATO alphabet and a few hundred common
English words (`tools/train_tiny/vocab.py`), homophones left out. It exists so that tests and demos
can check that a spoken word comes back as that word; outside this list, and on real human voices,
expect little.

{evaluation(args.model)}

## Data
`{args.data_command}`

Random sequences of 1-20 words from the vocabulary. Training: 8 espeak-ng accents x 20 voice
variants, rates 120-240 words/min in steps of 10, pitch 20-80, word gaps 0-50 ms, resampled to
16 kHz with soxr. Augmented on the log-mel frames at every step: silence before/after, gain
-20..+6 dB, white or pink noise at 10-40 dB SNR (half the clips), vocal-tract warp x0.88-1.12,
normalisation by a prefix's statistics (20%, as the server's streaming does), two frequency masks
and a short time mask per 1.2 s.

## Training
`{args.command}` (all of it: `tools/train_tiny/recipe`)

{steps} steps (batches of at most 6000 padded mel frames, ~60 s of audio), AdamW with linear
warm-up and cosine decay, zero biases and fan-in-scaled normal weights at the start
(`train.py: initialise`), CTC loss written in MLX (`train.py: ctc_loss`), in {minutes:.0f} min
on a 2-core x86 CPU (MLX CPU backend, OpenBLAS), each step split over two processes, one per core
(`--procs 2`, `parallel.py`). The letters phase (52 letter pieces, x4 subsampling) teaches the
encoder where sounds are; the words phase keeps that encoder and trains it with a new head of one
token per word, so the model only ever says words of its vocabulary. Where the command says
`--join 3 --join-from N`, steps from N on also see up to 3 clips joined with pauses (up to ~30 s),
as long as the server's long-audio chunks.
Final training loss (mean of the last 50 steps): {sum(h["loss"] for h in tail) / len(tail):.3f}
per token. Reproducible from the seed (data plan, initialisation, batching, augmentation), up to
floating-point summation order.

![loss](loss.png)

{examples_section(args.model)}

{args.notes}
"""
    (args.model / "CARD.md").write_text(card)
    # The closed word list, for tests that speak random sentences the model can know.
    (args.model / "words.txt").write_text("\n".join(vocab.words()) + "\n")
    print(args.model / "CARD.md")


if __name__ == "__main__":
    main()
