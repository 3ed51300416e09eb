"""Greedy decoding over encoder frames that carries its state from one block to the next.

TDT and RNN-T (with TDT's overshoot past a block's end) and CTC (collapsing repeats across the
block boundary); the streaming session decodes committed frames with the state it keeps and
its draft with a copy. With a context graph (boosting.py), each choice adds the gains of the
phrases' tokens (shallow fusion), and the state carries the graph's state too. `ctc_whole`
decodes a whole recording's CTC frames with parakeet-mlx's own token times and confidences.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx
import numpy as np

from parakeet_server.engine.boosting import ROOT, ContextGraph


@dataclass
class DecoderState:
    last_token: int | None = None
    hidden: Any = None
    overshoot: int = 0  # TDT durations may jump past a block's end
    previous_ctc: int = -1
    context: int = ROOT  # the phrase-boosting graph's state
    # The prediction network's output for (last_token, hidden), projected by the joint, and
    # the LSTM state after it: it changes only when a token is emitted, not at every blank.
    prediction: Any = None


def copy_state(state: DecoderState) -> DecoderState:
    return replace(state)


# Per graph and state, the gains of every token as one MLX row (blank gains nothing): a
# transducer step adds it to the joint's logits inside the same evaluation as the argmax.
_GAIN_ROWS: weakref.WeakKeyDictionary[ContextGraph, dict[int, mx.array]] = (
    weakref.WeakKeyDictionary()
)


def gain_row(graph: ContextGraph, state: int, size: int) -> mx.array:
    """What each of `size` tokens (the blank last) gains from `state`, as an MLX row."""
    rows = _GAIN_ROWS.setdefault(graph, {})
    key = graph.gain_state(state)
    row = rows.get(key)
    if row is None:
        dense = np.zeros(size, dtype=np.float32)
        ids, gains = graph.gains(key)
        dense[ids] = gains
        row = rows[key] = mx.array(dense)
    return row


def _confidence(logits: mx.array) -> float:
    """parakeet-mlx's entropy-based confidence of one token distribution."""
    probs = mx.softmax(logits, axis=-1)
    entropy = -mx.sum(probs * mx.log(probs + 1e-10), axis=-1)
    return float(1.0 - entropy / math.log(logits.shape[-1]))


def transducer_greedy(
    model: Any,
    features: mx.array,
    first_frame: int,
    state: DecoderState,
    tdt: bool,
    graph: ContextGraph | None = None,
) -> list[Any]:
    """Greedy TDT/RNN-T decoding that carries its state (and TDT overshoot) across blocks.

    The joint network's encoder projection runs once over all of `features`; the prediction
    network runs once per emitted token (not once per step, as a blank changes nothing it
    reads); each step's token and duration come back from one evaluation.
    """
    from parakeet_mlx.alignment import AlignedToken
    from parakeet_mlx.tokenizer import decode

    vocabulary = model.vocabulary
    blank = len(vocabulary)
    ratio = model.time_ratio
    length = features.shape[1]
    step = state.overshoot
    symbols = 0
    tokens = []
    joint = model.joint
    encoded = joint.enc(features[0])  # (T, joint hidden); lazy: nothing runs without a step
    while step < length:
        pred, (hidden, cell) = _prediction(model, state, features.dtype)
        out = encoded[step] + pred
        for layer in joint.joint_net:
            out = layer(out)
        logits = out[: blank + 1] if tdt else out
        scores = logits if graph is None else logits + gain_row(graph, state.context, blank + 1)
        # logits, not log-probabilities: boosting compares them up to a constant per step
        duration: int | None = None
        if tdt:
            choice = np.array(mx.stack([mx.argmax(scores), mx.argmax(out[blank + 1 :])]))
            token, duration = int(choice[0]), model.durations[int(choice[1])]
        else:
            token = int(np.array(mx.argmax(scores)))
        if token != blank:
            tokens.append(
                AlignedToken(
                    token,
                    start=(first_frame + step) * ratio,
                    duration=(duration if duration is not None else 1) * ratio,
                    confidence=_confidence(logits),
                    text=decode([token], vocabulary),
                )
            )
            state.last_token = token
            state.hidden = (hidden.astype(features.dtype), cell.astype(features.dtype))
            state.prediction = None
            if graph is not None:
                state.context = graph.next_state(state.context, token)
        if tdt:
            assert duration is not None
            step += duration
            symbols = 0 if duration else symbols + 1
        elif token == blank:
            step += 1
            symbols = 0
        else:
            symbols += 1
        if model.max_symbols is not None and symbols >= model.max_symbols:
            step += 1
            symbols = 0
    state.overshoot = step - length
    return tokens


def _prediction(model: Any, state: DecoderState, dtype: Any) -> tuple[mx.array, Any]:
    """The joint's projection of the prediction network's output for the state's last token
    and LSTM state, with the LSTM state after that token; computed once per emitted token."""
    if state.prediction is None:
        last = mx.array([[state.last_token]]) if state.last_token is not None else None
        decoder_out, hidden_cell = model.decoder(last, state.hidden)
        pred = model.joint.pred(decoder_out.astype(dtype))[0, 0]
        mx.eval(pred, hidden_cell)
        state.prediction = (pred, hidden_cell)
    prediction: tuple[mx.array, Any] = state.prediction
    return prediction


def ctc_path(
    logprobs: np.ndarray, blank: int, state: DecoderState, graph: ContextGraph | None
) -> np.ndarray:
    """The token chosen at each frame (T, V+1 log-probabilities), boosted by `graph` from the
    state's context; the state's context and previous frame follow the path."""
    path: np.ndarray = logprobs.argmax(axis=-1)
    previous = state.previous_ctc
    if graph is not None and graph.size > 1 and len(path):
        frames = np.arange(len(path))
        plain = logprobs[frames, path]
        # Only where some phrase token, given the most any token gains, could beat the best
        # token may boosting change the choice ("contested" frames): their best boosted
        # candidates are found for each state at once. The walk below visits those frames,
        # the frames that emit a token (the state follows them) and the frames right after a
        # contested one (whose token may have become a repeat, or stopped being one).
        reach = logprobs[:, graph.tokens].max(axis=-1) + graph.largest_gain
        contested = np.flatnonzero(reach > plain)
        row_of = np.full(len(path), -1)
        row_of[contested] = np.arange(len(contested))
        rows = logprobs[contested]
        visit = path != blank
        visit[1:] &= path[1:] != path[:-1]
        visit[0] &= int(path[0]) != previous
        visit[contested] = True
        visit[contested[contested + 1 < len(path)] + 1] = True
        tops: dict[int, _Candidates] = {}
        context = state.context
        chosen = path.tolist()
        rows_of = row_of.tolist()
        best = plain.tolist()
        for frame in np.flatnonzero(visit).tolist():
            token = chosen[frame]
            before = chosen[frame - 1] if frame else previous
            row = rows_of[frame]
            if row >= 0:
                key = graph.gain_state(context)
                top = tops.get(key)
                if top is None:
                    top = tops[key] = _Candidates(rows, *graph.gains(key))
                candidate, score = top.best(row, before)
                if score > best[frame]:
                    token = chosen[frame] = candidate
            if token != blank and token != before:
                context = graph.next_state(context, token)
        state.context = context
        path = np.array(chosen, dtype=path.dtype)
    if len(path):
        state.previous_ctc = int(path[-1])
    return path


class _Candidates:
    """The phrase tokens of one state on the contested frames: each row's best by
    log-probability plus gain, found for all rows at once."""

    def __init__(self, rows: np.ndarray, ids: np.ndarray, gains: np.ndarray) -> None:
        self._ids = ids
        self._scores = rows[:, ids] + gains
        best = self._scores.argmax(axis=1)
        self._best = ids[best].tolist()
        self._best_score = self._scores[np.arange(len(rows)), best].tolist()

    def best(self, row: int, repeat: int) -> tuple[int, float]:
        """Row `row`'s best token and score; `repeat` (the previous frame's token) emits
        nothing new, so it gains nothing and another token is the best (rarely asked)."""
        if self._best[row] != repeat:
            return self._best[row], self._best_score[row]
        scores = np.where(self._ids == repeat, -np.inf, self._scores[row])
        other = int(scores.argmax())
        return int(self._ids[other]), float(scores[other])


def ctc_greedy(
    model: Any,
    features: mx.array,
    first_frame: int,
    state: DecoderState,
    graph: ContextGraph | None = None,
) -> list[Any]:
    """Greedy CTC over one block, collapsing repeats across the block boundary."""
    from parakeet_mlx.alignment import AlignedToken
    from parakeet_mlx.tokenizer import decode

    logits = model.decoder(features)[0]
    blank = len(model.vocabulary)
    previous = state.previous_ctc
    if graph is None:
        best = np.array(mx.argmax(logits, axis=-1))
        state.previous_ctc = int(best[-1]) if len(best) else previous
    else:
        best = ctc_path(np.array(logits.astype(mx.float32)), blank, state, graph)
    probs = np.array(mx.max(mx.softmax(logits, axis=-1), axis=-1).astype(mx.float32))
    tokens = []
    for frame, token in enumerate(best.tolist()):
        if token != blank and token != previous:
            tokens.append(
                AlignedToken(
                    token,
                    start=(first_frame + frame) * model.time_ratio,
                    duration=model.time_ratio,
                    confidence=float(probs[frame]),
                    text=decode([token], model.vocabulary),
                )
            )
        previous = token
    return tokens


def ctc_whole(
    model: Any, logits: mx.array, state: DecoderState, graph: ContextGraph | None
) -> list[Any]:
    """Greedy CTC over a whole recording's log-probabilities (T, V+1), boosted by `graph`, with
    the token times and confidences parakeet-mlx's own CTC decoder gives: a token lasts until
    the next one starts (the last one until its last non-blank frame), and its confidence is
    one minus the mean entropy of its frames over the largest entropy."""
    from parakeet_mlx.alignment import AlignedToken
    from parakeet_mlx.tokenizer import decode

    vocabulary = model.vocabulary
    blank = len(vocabulary)
    path = ctc_path(np.array(logits.astype(mx.float32)), blank, state, graph).tolist()
    probs = mx.exp(logits)
    max_entropy = mx.log(mx.array(blank + 1, dtype=probs.dtype))

    def confidence(first: int, stop: int) -> float:
        frames = probs[first:stop]
        entropies = -mx.sum(frames * mx.log(frames + 1e-10), axis=-1)
        return float(1.0 - (mx.mean(entropies) / max_entropy))

    starts = [
        frame
        for frame, token in enumerate(path)
        if token != blank and not (frame > 0 and token == path[frame - 1])
    ]
    tokens = []
    for index, first in enumerate(starts):
        token = path[first]
        if index + 1 < len(starts):
            stop = starts[index + 1]
            start_time = first * model.time_ratio
            duration = stop * model.time_ratio - start_time
        else:
            stop = next(
                (f + 1 for f in range(len(path) - 1, first, -1) if path[f] != blank), first + 1
            )
            # parakeet-mlx's own arithmetic for the last token, to the last bit.
            factor = model.encoder_config.subsampling_factor
            rate = model.preprocessor_config.sample_rate
            hop = model.preprocessor_config.hop_length
            start_time = first * factor / rate * hop
            duration = stop * factor / rate * hop - start_time
        tokens.append(
            AlignedToken(
                token,
                start=start_time,
                duration=duration,
                confidence=confidence(first, stop),
                text=decode([token], vocabulary),
            )
        )
    return tokens
