"""Greedy decoding over encoder frames that carries its state from one block to the next.

TDT and RNN-T (with TDT's overshoot past a block's end) and CTC (collapsing repeats across the
block boundary); the streaming session decodes committed frames with the state it keeps and
its draft with a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np


@dataclass
class DecoderState:
    last_token: int | None = None
    hidden: Any = None
    overshoot: int = 0  # TDT durations may jump past a block's end
    previous_ctc: int = -1


def copy_state(state: DecoderState) -> DecoderState:
    return DecoderState(state.last_token, state.hidden, state.overshoot, state.previous_ctc)


def _confidence(logits: mx.array) -> float:
    """parakeet-mlx's entropy-based confidence of one token distribution."""
    probs = mx.softmax(logits, axis=-1)
    entropy = -mx.sum(probs * mx.log(probs + 1e-10), axis=-1)
    return float(1.0 - entropy / math.log(logits.shape[-1]))


def transducer_greedy(
    model: Any, features: mx.array, first_frame: int, state: DecoderState, tdt: bool
) -> list[Any]:
    """Greedy TDT/RNN-T decoding that carries its state (and TDT overshoot) across blocks."""
    from parakeet_mlx.alignment import AlignedToken
    from parakeet_mlx.tokenizer import decode

    vocabulary = model.vocabulary
    blank = len(vocabulary)
    ratio = model.time_ratio
    length = features.shape[1]
    step = state.overshoot
    symbols = 0
    tokens = []
    while step < length:
        last = mx.array([[state.last_token]]) if state.last_token is not None else None
        decoder_out, (hidden, cell) = model.decoder(last, state.hidden)
        decoder_out = decoder_out.astype(features.dtype)
        joint = model.joint(features[:, step : step + 1], decoder_out)[0, 0]
        logits = joint[:, : blank + 1] if tdt else joint
        token = int(mx.argmax(logits))
        duration = model.durations[int(mx.argmax(joint[:, blank + 1 :]))] if tdt else None
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


def ctc_greedy(model: Any, features: mx.array, first_frame: int, state: DecoderState) -> list[Any]:
    """Greedy CTC over one block, collapsing repeats across the block boundary."""
    from parakeet_mlx.alignment import AlignedToken
    from parakeet_mlx.tokenizer import decode

    logits = model.decoder(features)[0]
    best = np.array(mx.argmax(logits, axis=-1))
    probs = np.array(mx.max(mx.softmax(logits, axis=-1), axis=-1))
    blank = len(model.vocabulary)
    tokens = []
    previous = state.previous_ctc
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
    state.previous_ctc = previous
    return tokens
