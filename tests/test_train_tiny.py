"""The tools that trained tests/models/tiny-ctc-espeak: CTC loss, fast convolutions, gradient
averaging across processes, batching, the data plan, the untouched evaluation set, and the
vocabulary the checkpoint holds."""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import re
import subprocess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import data
import evaluate
import fastconv
import mlx.core as mx
import numpy as np
import parallel
import pytest
import train
import untouched
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


TOOLS = Path(train.__file__).resolve().parent


def _variant_files() -> set[str]:
    """espeak-ng's voice variants (it speaks an unknown one silently in the plain voice)."""
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Data at: (\S+)", version)
    assert match, version
    return {path.name for path in (Path(match.group(1)) / "voices" / "!v").iterdir()}


def test_the_untouched_set_shares_no_voice_rate_or_pitch_with_training_or_heldout() -> None:
    seen_variants = set(data.TRAIN_VARIANTS) | set(data.HELDOUT_VARIANTS)
    seen_speeds = set(data.TRAIN_SPEEDS) | set(data.HELDOUT_SPEEDS)
    assert not set(untouched.VARIANTS) & seen_variants
    assert not set(untouched.SPEEDS) & seen_speeds
    assert set(untouched.VARIANTS) <= _variant_files()
    plan = untouched.plan()
    assert plan == untouched.plan()  # a pure function of its fixed seed
    assert plan[: evaluate.TEST_CLIPS] == untouched.plan(evaluate.TEST_CLIPS)
    assert plan != untouched.plan(seed=untouched.SEED + 1)
    trained = data.plan(2000, heldout=False, seed=0) + data.plan(300, heldout=True, seed=0)
    assert min(u.pitch for u in trained) >= 20
    assert max(u.pitch for u in trained) <= 80
    for utterance in plan:
        accent, _, variant = utterance.voice.partition("+")
        assert accent in data.ACCENTS
        assert variant in untouched.VARIANTS
        assert utterance.speed in untouched.SPEEDS
        assert not 20 <= utterance.pitch <= 80
        assert 1 <= len(utterance.text.split()) <= 20
    assert {u.voice.partition("+")[2] for u in plan} == set(untouched.VARIANTS)


def _imports(module: str) -> set[str]:
    """The tools/train_tiny modules `module` imports, directly or through another of them."""
    found: set[str] = set()
    todo = [module]
    while todo:
        tree = ast.parse((TOOLS / f"{todo.pop()}.py").read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if (TOOLS / f"{name}.py").exists() and name not in found:
                    found.add(name)
                    todo.append(name)
    return found


def test_nothing_that_trains_can_reach_the_untouched_set(tmp_path: Path) -> None:
    """train.py does not import untouched.py (nor does anything it imports), reads only the
    sets data.py writes, and data.load refuses any other name; untouched.py writes no clips."""
    assert "untouched" not in _imports("train") | {"train"}
    assert "untouched" not in _imports("data")
    loads = [
        node
        for node in ast.walk(ast.parse((TOOLS / "train.py").read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "dataset"
    ]
    assert loads
    assert all(isinstance(c.args[1], ast.Constant) and c.args[1].value in data.SETS for c in loads)
    with pytest.raises(ValueError, match="untouched"):
        data.load(tmp_path, "untouched")
    source = (TOOLS / "untouched.py").read_text()
    assert not re.search(r"np\.save|savez|\.build\(|soundfile\.write|tofile", source)


def test_the_card_and_readme_report_the_evaluations_they_were_made_from() -> None:
    recorded = json.loads((TRAINED_MODEL / "untouched.json").read_text())
    card = (TRAINED_MODEL / "CARD.md").read_text()
    assert recorded["seed"] == untouched.SEED
    assert recorded["clips"] == untouched.CLIPS
    assert f"seed {untouched.SEED}" in card
    readme = (TRAINED_MODEL.parents[2] / "README.md").read_text()
    for result in (recorded, json.loads((TRAINED_MODEL / "eval.json").read_text())):
        for figure in (result["wer"], result["streaming"]["wer"]):
            assert f"{100 * figure:.1f}%" in card
            assert f"{100 * figure:.1f}%" in readme
