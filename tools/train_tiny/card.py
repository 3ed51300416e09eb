"""Writes the training card (CARD.md) and the loss curve (loss.png) next to a checkpoint.

python tools/train_tiny/card.py MODEL_DIR --command "the training command line"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vocab


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--command", required=True)
    parser.add_argument("--data-command", required=True)
    parser.add_argument("--letters", type=Path, help="the letters phase's checkpoint directory")
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    history = json.loads((args.model / "history.json").read_text())
    result = json.loads((args.model / "eval.json").read_text())
    config = json.loads((args.model / "config.json").read_text())
    phases = [("words", history)]
    if args.letters:
        phases.insert(0, ("letters", json.loads((args.letters / "history.json").read_text())))
    plot(phases, args.model / "loss.png")
    minutes = sum(phase[-1]["seconds"] for _, phase in phases) / 60
    steps = " + ".join(f"{phase[-1]['step']:.0f} ({name})" for name, phase in phases)
    encoder = config["encoder"]
    tail = history[-50:]
    examples = "\n".join(
        f"| {e['voice']} | {e['speed']} | {e['ref']} | {e['hyp']} |" for e in result["examples"]
    )
    variants = " ".join(f"{k} {100 * v:.1f}%" for k, v in result["by_variant"].items())
    speeds = " ".join(f"{k} {100 * v:.1f}%" for k, v in result["by_speed"].items())
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

**Held-out WER: {100 * result["wer"]:.1f}%** ({result["clips"]} clips, {result["words"]} words, 1-20
random words each) on voice variants ({", ".join(result["variants"])}) and speaking rates
({", ".join(map(str, result["speeds"]))} words/min) that never occur in training, measured with
jiwer through the server's `ParakeetEngine` (`tools/train_tiny/evaluate.py`).

- by variant: {variants}
- by rate: {speeds}

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

## Examples (held-out)
| voice | rate | spoken | transcribed |
|---|---|---|---|
{examples}

{args.notes}
"""
    (args.model / "CARD.md").write_text(card)
    # The closed word list, for tests that speak random sentences the model can know.
    (args.model / "words.txt").write_text("\n".join(vocab.words()) + "\n")
    print(args.model / "CARD.md")


if __name__ == "__main__":
    main()
