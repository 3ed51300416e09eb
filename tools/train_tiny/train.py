"""Trains a small ParakeetCTC on the synthesised clips and saves it as config.json + weights.

The model is parakeet-mlx's own ParakeetCTC (built with `from_config`, saved like
`parakeet_server.engine.checkpoint`), so the server loads the result with `--model DIR`.
Augmentation happens on raw log-mel frames (noise, gain, vocal-tract warp, masks, silence,
prefix-only normalisation as in streaming), so each clip is turned into features only once.

    python tools/train_tiny/train.py DATA_DIR OUT_DIR [--steps 3000] [--seed 0]

A step runs on one core (MLX's CPU backend computes on one thread); `--procs N` runs N
processes that each take 1/N of every batch and average their gradients (parallel.py). They
share one random stream for batching and each has its own for augmentation, so a run repeats
exactly for one seed and N.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from parakeet_server.engine.runtime import use_fast_blas  # noqa: E402

use_fast_blas()

import data as dataset  # noqa: E402
import fastconv  # noqa: E402
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import parallel  # noqa: E402
import vocab  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402
from parakeet_mlx.utils import from_config  # noqa: E402

from parakeet_server.engine.checkpoint import make_config  # noqa: E402
from parakeet_server.engine.features import StreamingFeatures  # noqa: E402

NEG = -1e30
FLOOR = math.log(1e-5)  # log-mel of digital silence


def model_config(d_model: int, layers: int, channels: int, tokens: str) -> dict[str, Any]:
    """The tiny CTC config of checkpoint.py with this vocabulary and encoder size."""
    config = make_config("ctc", "tiny")
    config["encoder"].update(
        n_layers=layers, d_model=d_model, n_heads=4, subsampling_conv_channels=channels
    )
    if tokens == "letters":  # 40 ms frames: room for ~20 letters a second
        config["encoder"]["subsampling_factor"] = 4
    pieces = vocab.pieces(tokens)
    config["decoder"].update(feat_in=d_model, num_classes=len(pieces), vocabulary=pieces)
    return config


def flatten(tree: Any) -> list[tuple[str, Any]]:
    """tree_flatten's (name, leaf) list; it is typed to return a dict too (given one to fill)."""
    flat = tree_flatten(tree)
    assert isinstance(flat, list)
    return flat


def initialise(model: Any) -> None:
    """Zero biases and fan-in-scaled normal weights (He for the ReLU subsampling convs).

    MLX's default init (uniform +-1/sqrt(fan_in), biases too) shrinks the subsampling output to
    ~0.05 while every bias adds a constant of the same size, so the frames reaching the decoder
    barely differ from each other. From there CTC sat on its all-blank plateau in every run; with
    this init (and a peak learning rate <= 3e-4) one batch is fitted in tens of steps.
    """
    new = {}
    for name, value in flatten(model.parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if (leaf == "bias" and "norm" not in name) or leaf.startswith("pos_bias"):
            new[name] = mx.zeros_like(value)
        elif leaf == "weight" and value.ndim >= 2:
            fan_in = math.prod(value.shape[1:])
            gain = math.sqrt(2.0) if "pre_encode.conv" in name else 1.0
            new[name] = mx.random.normal(value.shape) * (gain / math.sqrt(fan_in))
    model.update(tree_unflatten(list(new.items())))


# --- features and augmentation ------------------------------------------------------------------


def raw_mels(clips: list[np.ndarray], preprocessor: Any) -> list[np.ndarray]:
    """Unnormalised log-mel frames of each clip, exactly as the server computes them."""
    out = []
    for clip in clips:
        features = StreamingFeatures(preprocessor)
        samples = clip.astype(np.float32) / 32768
        raw = mx.concatenate([features.accept(samples), features.finish()])
        out.append(np.array(raw, dtype=np.float32))
    return out


class Augmenter:
    def __init__(self, preprocessor: Any, rng: np.random.Generator) -> None:
        self.rng = rng
        noise = rng.standard_normal(16000 * 20).astype(np.float32) * 0.1
        # Pink-ish noise: white noise through a leaky integrator.
        pink = np.zeros_like(noise)
        acc = 0.0
        for i in range(0, noise.size, 1):
            acc = 0.98 * acc + noise[i]
            pink[i] = acc
        pink *= 0.1 / pink.std()
        self.noise = [
            np.exp(m)
            for m in raw_mels([(n * 32767).astype(np.int16) for n in (noise, pink)], preprocessor)
        ]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        rng = self.rng
        power = np.exp(raw) - 1e-5
        # Silence before and after, as a recording would have.
        lead, trail = rng.integers(0, 40, 2)
        power = np.pad(power, ((lead, trail), (0, 0)))
        power *= 10 ** (rng.uniform(-20, 6) / 10)
        if rng.random() < 0.5:
            bank = self.noise[int(rng.integers(2))]
            if bank.shape[0] <= power.shape[0]:  # joined clips can outlast the 20 s of noise
                bank = np.tile(bank, (power.shape[0] // bank.shape[0] + 2, 1))
            start = int(rng.integers(0, bank.shape[0] - power.shape[0]))
            segment = bank[start : start + power.shape[0]]
            snr = rng.uniform(10, 40)
            scale = power.mean() / segment.mean() / 10 ** (snr / 10)
            power = power + scale * segment
        mel = np.log(power + 1e-5)
        # Vocal-tract length perturbation: stretch the mel axis a little.
        alpha = rng.uniform(0.88, 1.12)
        position = np.clip(np.arange(mel.shape[1]) * alpha, 0, mel.shape[1] - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, mel.shape[1] - 1)
        frac = position - low
        mel = mel[:, low] * (1 - frac) + mel[:, high] * frac
        # Per-feature normalisation; sometimes with a prefix's statistics, as streaming does.
        stats = mel
        if rng.random() < 0.2:
            stats = mel[: int(rng.integers(min(100, mel.shape[0]), mel.shape[0] + 1))]
        mel = (mel - stats.mean(0)) / (stats.std(0) + 1e-5)
        for _ in range(2):  # SpecAugment
            width = int(rng.integers(0, 9))
            start = int(rng.integers(0, mel.shape[1] - width))
            mel[:, start : start + width] = 0
        for _ in range(mel.shape[0] // 120):
            width = int(rng.integers(0, 8))
            start = int(rng.integers(0, max(1, mel.shape[0] - width)))
            mel[start : start + width] = 0
        features: np.ndarray = mel.astype(np.float32)
        return features


def normalise(raw: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = ((raw - raw.mean(0)) / (raw.std(0) + 1e-5)).astype(np.float32)
    return normalised


# --- CTC ----------------------------------------------------------------------------------------


def ctc_loss(
    log_probs: mx.array, lengths: mx.array, labels: mx.array, label_lengths: mx.array, blank: int
) -> mx.array:
    """Per-sequence CTC negative log-likelihood; log_probs (B, T, V), labels (B, L) padded."""
    batch, frames, _ = log_probs.shape
    width = labels.shape[1]
    # Extended labels: blank, l1, blank, l2, ..., blank.
    ext = mx.full((batch, 2 * width + 1), blank, dtype=mx.int32)
    ext[:, 1::2] = labels
    emissions = mx.take_along_axis(
        log_probs, mx.broadcast_to(ext[:, None, :], (batch, frames, ext.shape[1])), axis=2
    )
    previous2 = mx.concatenate([mx.full((batch, 2), -1, mx.int32), ext[:, :-2]], axis=1)
    can_skip = (ext != blank) & (ext != previous2)
    positions = mx.arange(ext.shape[1])[None]
    alpha = mx.where(positions < 2, emissions[:, 0], NEG)
    neg1 = mx.full((batch, 1), NEG)
    neg2 = mx.full((batch, 2), NEG)
    for t in range(1, frames):
        stay = alpha
        step = mx.concatenate([neg1, alpha[:, :-1]], axis=1)
        skip = mx.where(can_skip, mx.concatenate([neg2, alpha[:, :-2]], axis=1), NEG)
        new = mx.logaddexp(mx.logaddexp(stay, step), skip) + emissions[:, t]
        alpha = mx.where((t < lengths)[:, None], new, alpha)
    end = 2 * label_lengths
    last = mx.take_along_axis(alpha, end[:, None], axis=1)[:, 0]
    before = mx.take_along_axis(alpha, (end - 1)[:, None], axis=1)[:, 0]
    return -mx.logaddexp(last, before)


# --- training -----------------------------------------------------------------------------------


def batches(lengths: list[int], max_frames: int, rng: np.random.Generator) -> list[list[int]]:
    """Clips of similar length together (little padding), at most max_frames padded frames."""
    order = np.argsort(np.array(lengths) + rng.uniform(0, 30, len(lengths)))
    out: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = max([lengths[i] for i in current] + [lengths[index]])
        if current and longest * (len(current) + 1) > max_frames:
            out.append(current)
            current = []
        current.append(int(index))
    if current:
        out.append(current)
    rng.shuffle(out)
    return out


def join_clips(pool: list[int], most: int, rng: np.random.Generator) -> list[list[int]]:
    """The clips of `pool` in random groups of 1 to `most`."""
    order = [pool[i] for i in rng.permutation(len(pool))]
    groups = []
    while order:
        size = int(rng.integers(1, most + 1))
        groups.append(order[:size])
        order = order[size:]
    return groups


def joined_raw(raws: list[np.ndarray], group: list[int], gaps: np.ndarray) -> np.ndarray:
    """The raw log-mels of `group` one after another, each followed by a pause of `gaps` frames."""
    parts = []
    for i, gap in zip(group, gaps, strict=True):
        parts += [raws[i], np.full((int(gap), raws[i].shape[1]), FLOOR, np.float32)]
    return np.concatenate(parts[:-1])


def average(
    loss: mx.array, grads: Any, flag: float, exchange: parallel.Exchange
) -> tuple[mx.array, Any, bool]:
    """The loss and gradients averaged over the training processes, and whether any of them
    raised `flag`."""
    if exchange.size == 1:
        return loss, grads, bool(flag)
    mx.eval(loss, grads)
    named = flatten(grads)
    parts = [np.array(value, dtype=np.float32).ravel() for _, value in named]
    mean = exchange.average(np.concatenate([*parts, np.array([float(loss), flag], np.float32)]))
    averaged, start = [], 0
    for (name, value), part in zip(named, parts, strict=True):
        averaged.append((name, mx.array(mean[start : start + part.size].reshape(value.shape))))
        start += part.size
    return mx.array(mean[-2]), tree_unflatten(averaged), bool(mean[-1] > 0)


def save(model: Any, config: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    mx.save_safetensors(str(out / "model.safetensors"), dict(flatten(model.parameters())))


def greedy_text(model: Any, mel: np.ndarray) -> str:
    features, _ = model.encoder(mx.array(mel)[None])
    best = np.array(mx.argmax(model.decoder(features)[0], axis=-1))
    blank = len(model.vocabulary)
    pieces = [
        model.vocabulary[t]
        for i, t in enumerate(best)
        if t != blank and (i == 0 or t != best[i - 1])
    ]
    return "".join(pieces).replace("▁", " ").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--d-model", type=int, default=144)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument(
        "--stop-after", type=int, default=0, help="stop after this many of the --steps planned"
    )
    parser.add_argument("--max-minutes", type=float, default=0, help="stop early after this long")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-frames", type=int, default=6000, help="mel frames per batch")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--tokens", choices=("words", "letters"), default="letters")
    parser.add_argument("--short-steps", type=int, default=0, help="steps on short clips first")
    parser.add_argument("--short-len", type=int, default=20, help="tokens in a short clip")
    parser.add_argument("--no-augment", action="store_true", help="clean features (debugging)")
    parser.add_argument(
        "--init-from", type=Path, help="start from this checkpoint's encoder (new token head)"
    )
    parser.add_argument("--join", type=int, default=1, help="join up to this many clips into one")
    parser.add_argument("--join-from", type=int, default=0, help="join clips from this step on")
    parser.add_argument("--limit", type=int, default=0, help="use only this many clips")
    parser.add_argument("--procs", type=int, default=1, help="processes, one per core")
    args = parser.parse_args()
    parallel.run(train, args, args.procs)


def train(args: argparse.Namespace, exchange: parallel.Exchange) -> None:
    import jiwer

    rank, size = exchange.rank, exchange.size
    lead = rank == 0

    def log(text: str) -> None:
        if lead:
            print(text, flush=True)

    rng = np.random.default_rng(args.seed)  # batching: the same in every process
    mx.random.seed(args.seed)  # the same initial weights in every process
    config = model_config(args.d_model, args.layers, args.channels, args.tokens)
    if args.init_from:
        config["encoder"] = json.loads((args.init_from / "config.json").read_text())["encoder"]
        config["decoder"]["feat_in"] = config["encoder"]["d_model"]
    model = from_config(config)
    initialise(model)
    if args.init_from:
        weights = mx.load(str(args.init_from / "model.safetensors"))
        encoder = [(k, v) for k, v in weights.items() if k.startswith("encoder.")]  # type: ignore[union-attr]
        model.update(tree_unflatten(encoder))
        log(f"encoder from {args.init_from}: {len(encoder)} arrays")
    fastconv.install(model)
    blank = len(model.vocabulary)
    params = sum(v.size for _, v in flatten(model.parameters()))
    log(f"model: {params:,} parameters, {size} process(es)")

    started = time.perf_counter()
    clips, utts = dataset.load(args.data, "train")
    if args.limit:
        clips, utts = clips[: args.limit], utts[: args.limit]
    targets = [vocab.encode(u.text, model.vocabulary) for u in utts]
    raws = raw_mels(clips, model.preprocessor_config)
    del clips  # the features are all that is used from here on
    # CTC needs a frame per token and one between repeated tokens; drop the few clips too fast.
    factor = config["encoder"]["subsampling_factor"]
    keep = [
        i
        for i, t in enumerate(targets)
        if len(t) + sum(a == b for a, b in itertools.pairwise(t)) < raws[i].shape[0] // factor
    ]
    log(f"clips: {len(keep)} of {len(raws)} fit their CTC alignment")
    raws, targets = [raws[i] for i in keep], [targets[i] for i in keep]
    # Progress is watched on 60 held-out clips; nothing is selected by it (the last step is kept).
    val_clips, val_utts = dataset.load(args.data, "heldout")
    val = [
        (normalise(r), u.text)
        for r, u in zip(
            raw_mels(val_clips[:60], model.preprocessor_config), val_utts[:60], strict=True
        )
    ]
    # Augmentation draws its own random stream in each of several processes (one stream alone).
    own = rng if size == 1 else np.random.default_rng([args.seed, rank])
    augment = Augmenter(model.preprocessor_config, own)
    log(f"features: {len(raws)} clips in {time.perf_counter() - started:.0f} s")

    schedule = optim.join_schedules(
        [
            optim.linear_schedule(1e-5, args.lr, args.warmup),
            optim.cosine_decay(args.lr, args.steps - args.warmup, args.lr * 0.02),
        ],
        [args.warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=1e-3)

    def loss_fn(
        model: Any, mel: mx.array, lengths: mx.array, labels: mx.array, label_lengths: mx.array
    ) -> mx.array:
        features, out_lengths = model.encoder(mel, lengths)
        log_probs = model.decoder(features)
        losses = ctc_loss(log_probs, out_lengths, labels, label_lengths, blank)
        return losses.sum() / label_lengths.sum()

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    history: list[dict[str, float]] = []
    step = 0
    train_started = time.perf_counter()

    def joining(step: int) -> int:
        return args.join if step >= max(args.short_steps, args.join_from) else 1

    last = min(args.steps, args.stop_after or args.steps)
    while step < last:
        # Curriculum: short clips first. With a few words per clip, where each word is, is nearly
        # given, which gets CTC off its all-blank plateau in a few hundred steps instead of many.
        pool = [
            i for i, t in enumerate(targets) if step >= args.short_steps or len(t) <= args.short_len
        ]
        # Utterances joined end to end with pauses (--join), so that the model also knows
        # recordings as long as the server's 30 s chunks; one clip each otherwise.
        most = joining(step)
        groups = join_clips(pool, most, rng) if most > 1 else [[i] for i in pool]
        gaps = [rng.integers(10, 80, len(g)) if most > 1 else np.zeros(1, int) for g in groups]
        sizes = [
            sum(raws[i].shape[0] for i in g) + int(p[:-1].sum())
            for g, p in zip(groups, gaps, strict=True)
        ]
        # Each process takes its share of a step's frames: the i-th of every `size` batches.
        planned = batches([n + 40 for n in sizes], args.max_frames // size, rng)
        for shares in zip(*[iter(planned)] * size, strict=False):
            batch = [(groups[i], gaps[i]) for i in shares[rank]]
            if step == args.short_steps and len(pool) < len(raws):
                break
            if joining(step) != most:
                break
            if step >= last:
                break
            joined = [joined_raw(raws, group, gap) for group, gap in batch]
            tokens = [[t for i in group for t in targets[i]] for group, _ in batch]
            mels = [normalise(r) if args.no_augment else augment(r) for r in joined]
            longest = max(m.shape[0] for m in mels)
            padded = np.stack([np.pad(m, ((0, longest - m.shape[0]), (0, 0))) for m in mels])
            width = max(map(len, tokens))
            labels = np.array([t + [0] * (width - len(t)) for t in tokens])
            loss, grads = loss_and_grad(
                model,
                mx.array(padded),
                mx.array([m.shape[0] for m in mels]),
                mx.array(labels, dtype=mx.int32),
                mx.array([len(t) for t in tokens], dtype=mx.int32),
            )
            late = args.max_minutes and time.perf_counter() - train_started > args.max_minutes * 60
            # Every process stops at the same step (the leader's clock), or the others wait.
            loss, grads, late = average(loss, grads, float(bool(late) and lead), exchange)
            # mlx.optimizers leaves clip_grad_norm unannotated.
            grads, _ = optim.clip_grad_norm(grads, 5.0)  # type: ignore[no-untyped-call]
            optimizer.update(model, grads)
            mx.eval(model.parameters(), optimizer.state, loss)
            step += 1
            record = {
                "step": step,
                "loss": float(loss),
                "seconds": time.perf_counter() - train_started,
            }
            if step % 25 == 0 and lead:
                print(
                    f"step {step} loss {record['loss']:.3f} "
                    f"lr {float(optimizer.learning_rate):.2e} "
                    f"t {record['seconds']:.0f}s",
                    flush=True,
                )
            if lead and (step % args.eval_every == 0 or step == args.steps):
                hyps = [greedy_text(model, m) for m, _ in val]
                record["val_wer"] = float(jiwer.wer([t for _, t in val], hyps))
                print(
                    f"step {step} val_wer {record['val_wer']:.3f} | {hyps[0]!r} vs {val[0][1]!r}",
                    flush=True,
                )
                save(model, config, args.out)
                (args.out / "history.json").write_text(json.dumps([*history, record]))
            history.append(record)
            if late:
                log(f"stopping at step {step}: --max-minutes reached")
                args.steps = last = step
                break
    if lead:
        save(model, config, args.out)
        (args.out / "history.json").write_text(json.dumps(history))
    log(f"done: {step} steps in {time.perf_counter() - train_started:.0f} s")
    mx.clear_streams()


if __name__ == "__main__":
    main()
