"""The tools that trained tests/models/tiny-ctc-espeak: CTC loss, fast convolutions, gradient
averaging across processes, batching, the data plan, and the vocabulary the checkpoint holds."""

from __future__ import annotations

import itertools
import json
import math
import os
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import data
import fastconv
import mlx.core as mx
import numpy as np
import parallel
import pytest
import train
import vocab
from parakeet_mlx.utils import from_config

from conftest import TRAINED_MODEL


def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    out: list[int] = []
    previous = None
    for token in path:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


def _brute_force_nll(log_probs: np.ndarray, label: list[int], blank: int) -> float:
    """-log of the summed probability of every path that collapses to `label`."""
    frames, classes = log_probs.shape
    total = -math.inf
    for path in itertools.product(range(classes), repeat=frames):
        if _collapse(path, blank) == label:
            total = np.logaddexp(total, sum(log_probs[t, k] for t, k in enumerate(path)))
    return -float(total)


def test_ctc_loss_is_the_sum_over_every_alignment() -> None:
    rng = np.random.default_rng(0)
    classes, frames, blank = 3, 5, 2
    logits = rng.normal(0, 1.5, (4, frames, classes))
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    # A repeat (needs a blank between), a pair, one label, and a sequence shorter than the batch.
    labels = [[0, 0], [0, 1], [1], [1, 0]]
    lengths = [5, 5, 5, 3]
    padded = np.array([row + [0] * (2 - len(row)) for row in labels], np.int32)
    got = train.ctc_loss(
        mx.array(log_probs.astype(np.float32)),
        mx.array(np.array(lengths, np.int32)),
        mx.array(padded),
        mx.array(np.array([len(row) for row in labels], np.int32)),
        blank,
    )
    expected = [
        _brute_force_nll(log_probs[b, : lengths[b]], labels[b], blank) for b in range(len(labels))
    ]
    assert np.array(got) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("tokens", ["words", "letters"])
def test_fast_convolutions_match_the_stock_module(tokens: str) -> None:
    mx.random.seed(0)
    model = from_config(train.model_config(d_model=32, layers=1, channels=16, tokens=tokens))
    assert fastconv.check(model) < 1e-4


def _average_twice(folder: str, exchange: parallel.Exchange) -> None:
    vector = np.arange(6, dtype=np.float32) * (exchange.rank + 1)
    first = exchange.average(vector)
    second = exchange.average(vector + 10)  # the shared memory is reused
    np.save(Path(folder) / f"rank{exchange.rank}.npy", np.stack([first, second]))


def _fail_on_rank_one(folder: str, exchange: parallel.Exchange) -> None:
    exchange.average(np.zeros(4, np.float32))  # the shared memory now exists
    if exchange.rank == 1:
        raise RuntimeError("rank 1 fails in its second step")
    exchange.average(np.zeros(4, np.float32))  # rank 0 waits here for ever


def test_processes_average_their_vectors_and_agree(tmp_path: Path) -> None:
    parallel.run(_average_twice, str(tmp_path), size=2)
    results = [np.load(tmp_path / f"rank{rank}.npy") for rank in range(2)]
    expected = np.arange(6, dtype=np.float32) * 1.5
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], [expected, expected + 10])


def test_one_failed_process_stops_the_run_and_frees_the_shared_memory(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="a training process failed"):
        parallel.run(_fail_on_rank_one, str(tmp_path), size=2)
    with pytest.raises(FileNotFoundError):
        SharedMemory(f"train_tiny_{os.getpid()}")  # the name parallel.run gave it


def test_batches_hold_every_clip_once_within_the_frame_budget() -> None:
    rng = np.random.default_rng(1)
    lengths = [int(n) for n in rng.integers(50, 400, 200)]
    chosen = train.batches(lengths, 1200, np.random.default_rng(7))
    assert sorted(i for batch in chosen for i in batch) == list(range(200))
    assert all(max(lengths[i] for i in batch) * len(batch) <= 1200 for batch in chosen)
    assert chosen == train.batches(lengths, 1200, np.random.default_rng(7))


def test_the_data_plan_repeats_from_its_seed_and_holds_voices_and_rates_out() -> None:
    training = data.plan(200, heldout=False, seed=0)
    heldout = data.plan(50, heldout=True, seed=0)
    assert training == data.plan(200, heldout=False, seed=0)
    assert training != data.plan(200, heldout=False, seed=1)

    def variants(plan: list[Any]) -> set[str]:
        return {u.voice.partition("+")[2] for u in plan}

    assert not variants(heldout) & variants(training)
    assert not {u.speed for u in heldout} & {u.speed for u in training}
    known = set(vocab.words())
    for utterance in training + heldout:
        said = utterance.text.split()
        assert 1 <= len(said) <= 20
        assert set(said) <= known


def test_the_committed_checkpoint_holds_the_recipes_vocabulary() -> None:
    config = json.loads((TRAINED_MODEL / "config.json").read_text())
    assert config["decoder"]["vocabulary"] == vocab.pieces("words")
    ids = vocab.encode("alfa seven xray", config["decoder"]["vocabulary"])
    assert [config["decoder"]["vocabulary"][i] for i in ids] == ["▁alfa", "▁seven", "▁xray"]
