"""Incremental transcription of a live stream with a Parakeet model, in plain MLX operations.

parakeet-mlx's own streaming switches the *shared* model to a local-attention module backed by a
Metal-only kernel, and re-encodes its whole right-context region on every call. This module
instead runs the model's own layers block by block with its weights untouched:

- features: a streaming log-mel front end that computes every STFT frame exactly once, as the
  whole-signal STFT would, with per-feature normalisation from running statistics of the
  frames up to each window's end;
- encoder: each step encodes one fixed block of new frames plus a short look-ahead. Attention
  is local by construction — queries see a bounded cache of committed keys/values on their
  left (`left_context_frames`) and the block and look-ahead on their right — computed with
  ordinary matmuls (`local_attention`), so it runs on CPU, CUDA and Metal alike. The depthwise
  convolution keeps the few frames of left context it needs. Per-step work is bounded by
  block + look-ahead + left context, never by how long the stream has run;
- decoder: greedy TDT/RNN-T (or CTC) decoding over committed frames carries its state across
  blocks (the boosted phrases' state too); the look-ahead frames are decoded into a draft that
  the next block replaces.

Block boundaries depend only on the audio position, so a stream gives the same result however
its audio was split into messages or paced. With a left context that holds the whole stream and
a single step, the encoder computes exactly what the full-attention model computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from parakeet_server import domain
from parakeet_server.domain import BlockSchedule, Transcript
from parakeet_server.engine import fast_encoder
from parakeet_server.engine.boosting import ContextGraph
from parakeet_server.engine.decoding import DecoderState, copy_state, ctc_greedy, transducer_greedy
from parakeet_server.engine.fast_encoder import Groups
from parakeet_server.engine.features import RunningNormaliser, StreamingFeatures
from parakeet_server.engine.results import to_transcript


def samples_needed(preprocessor: Any, subsampling: int, frames: int) -> int:
    """Input samples after which encoder frame `frames - 1` has its whole receptive field."""
    return domain.samples_needed(
        hop_length=preprocessor.hop_length,
        win_length=preprocessor.win_length,
        n_fft=preprocessor.n_fft,
        subsampling=subsampling,
        frames=frames,
    )


@dataclass
class StepResult:
    """What one step added: committed tokens (final) and the draft after them."""

    committed: list[Any]
    draft: list[Any]


# --- encoder ------------------------------------------------------------------------------------


def local_attention(
    attn: Any,
    x: mx.array,
    cached_keys: mx.array | None,
    cached_values: mx.array | None,
    pe_table: mx.array,
    projected: tuple[mx.array, int] | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """Relative-position self-attention of the frames `x` over cached keys plus themselves.

    `attn` is the model's RelPositionMultiHeadAttention (only its weights are read), `x` is
    (1, S, d), the caches (H, P, dh). Query i sits at position P + i, key j at position j;
    the relative-position term uses the encoder's sinusoid table exactly as the model's
    full attention does. `projected` may give that term's projection precomputed, as
    (positions (H, n, dh) highest first, highest relative position), covering this call's
    range. Returns the output (1, S, d) and this call's keys and values.
    """
    heads, head_dim = attn.n_head, attn.head_dim
    steps = x.shape[1]
    q = attn.linear_q(x)[0].reshape(steps, heads, head_dim).transpose(1, 0, 2)
    k = attn.linear_k(x)[0].reshape(steps, heads, head_dim).transpose(1, 0, 2)
    v = attn.linear_v(x)[0].reshape(steps, heads, head_dim).transpose(1, 0, 2)
    past = 0 if cached_keys is None else cached_keys.shape[1]
    keys = k if cached_keys is None else mx.concatenate([cached_keys, k], axis=1)
    values = v if cached_values is None else mx.concatenate([cached_values, v], axis=1)
    q_u = q + mx.expand_dims(attn.pos_bias_u, 1)
    q_v = q + mx.expand_dims(attn.pos_bias_v, 1)
    # Relative positions (query - key) run from -(S-1) to P+S-1.
    lowest = -(steps - 1)
    highest = past + steps - 1
    if projected is not None:
        table, top = projected
        positions = table[:, top - highest : top - lowest + 1]
    else:
        positions = project_positions(attn, pe_table, lowest, highest, x.dtype)
    position_scores = q_v @ positions.swapaxes(-1, -2)  # (H, S, highest - lowest + 1)
    relative = (past + mx.arange(steps))[:, None] - mx.arange(past + steps)[None, :]
    index = mx.broadcast_to((highest - relative)[None], (heads, steps, past + steps))
    scores = q_u @ keys.swapaxes(-1, -2) + mx.take_along_axis(position_scores, index, axis=-1)
    weights = mx.softmax(scores * attn.scale, axis=-1, precise=True)
    out = (weights @ values).transpose(1, 0, 2).reshape(1, steps, heads * head_dim)
    return attn.linear_out(out), k, v


def project_positions(
    attn: Any, pe_table: mx.array, lowest: int, highest: int, dtype: Any
) -> mx.array:
    """linear_pos of the sinusoids for relative positions highest..lowest, as (H, n, dh)."""
    centre = pe_table.shape[1] // 2
    rows = pe_table[0, centre - highest : centre - lowest + 1].astype(dtype)  # highest first
    projected: mx.array = (
        attn.linear_pos(rows).reshape(-1, attn.n_head, attn.head_dim).transpose(1, 0, 2)
    )
    return projected


# Two frames of left context and one of right context make the strided convolutions of the
# subsampling see what they would in the whole signal; zero padding only at the true edges.
_MEL_CONTEXT = 2

# Relative positions per precomputed table (4 MB per layer at d_model 1024).
MAX_POSITION_TABLE = 1024


@dataclass
class _LayerCache:
    """A stream's context in one layer, per lane of the fast encoder (`fast_encoder.Groups`:
    each lane's heads, each lane's channels; one group without it)."""

    keys: Groups | None = None  # per lane (h, P, dh)
    values: Groups | None = None
    conv: Groups | None = None  # GLU outputs of the last committed frames, (1, (K-1)/2, c)
    # After a batched step in which every stream kept as many keys: the batch's kept keys
    # and values (per lane (B, h, P, dh)), this stream's row, and the `keys` of that row.
    # The next step of the same streams in the same order attends to them as they are.
    stacked: tuple[Groups, Groups, int, Groups] | None = None


class StreamingSession:
    """One live stream: feed samples, read committed and draft tokens, finish.

    Not thread-safe: like the model, use it from the model thread only.
    """

    def __init__(
        self,
        model: Any,
        settings: BlockSchedule | None = None,
        shared: dict[str, Any] | None = None,
        graph: ContextGraph | None = None,
    ) -> None:
        from parakeet_mlx import ParakeetCTC, ParakeetRNNT, ParakeetTDT

        self._model = model
        self._settings = settings or BlockSchedule()
        # Weight-derived tables that every stream with these settings can reuse.
        self._shared = shared if shared is not None else {}
        self._encoder = model.encoder
        self._fast = fast_encoder.fast_encoder_of(model)  # installed by the engine, or None
        self._subsampling = model.encoder_config.subsampling_factor
        self._features = StreamingFeatures(model.preprocessor_config)
        self._normaliser = RunningNormaliser(model.preprocessor_config.features)
        self._mel = mx.zeros((0, model.preprocessor_config.features), mx.float32)
        self._mel_offset = 0  # global index of self._mel[0]
        self._stats_end = 0  # mel frames [0, _stats_end) are in the normaliser's statistics
        self._committed_frames = 0  # encoder frames committed so far
        self._caches = [_LayerCache() for _ in self._encoder.layers]
        self._conv_context = (model.encoder_config.conv_kernel_size - 1) // 2
        self._state = DecoderState()
        self._graph = graph  # phrases to boost; their state is carried in self._state
        self._is_ctc = isinstance(model, ParakeetCTC)
        self._is_tdt = isinstance(model, ParakeetTDT)
        if not (self._is_ctc or self._is_tdt or isinstance(model, ParakeetRNNT)):
            raise ValueError(f"{type(model).__name__} cannot stream")
        self._dtype = next(iter(_leaves(model.parameters()))).dtype
        self.tokens: list[Any] = []
        self.draft: list[Any] = []
        self._reported = 0  # tokens already handed out by new_tokens()
        self._decoded_frames = 0  # committed and look-ahead frames decoded so far
        self._finished = False

    @property
    def samples(self) -> int:
        return self._features.samples

    @property
    def committed_seconds(self) -> float:
        return float(self._committed_frames * self._model.time_ratio)

    @property
    def decoded_seconds(self) -> float:
        """How far the decoder has looked: the committed frames and the last draft's."""
        return float(self._decoded_frames * self._model.time_ratio)

    def new_tokens(self) -> list[Any]:
        """The committed tokens not handed out by an earlier call."""
        fresh = self.tokens[self._reported :]
        self._reported = len(self.tokens)
        return fresh

    def samples_for_next_block(self) -> int:
        """Input samples after which the next block (with its look-ahead) can be encoded."""
        block, ahead = self._settings.block_frames, self._settings.lookahead_frames
        return samples_needed(
            self._model.preprocessor_config,
            self._subsampling,
            self._committed_frames + block + ahead,
        )

    def pending_blocks(self) -> int:
        """Blocks whose audio (with its look-ahead) has fully arrived but is not encoded yet."""
        ready = self._mel_offset + self._mel.shape[0]
        # A frame needs the mel of its receptive field: 7 frames to its right, plus look-ahead.
        usable = (ready - self._subsampling) // self._subsampling
        block, ahead = self._settings.block_frames, self._settings.lookahead_frames
        return max(0, int(usable - ahead - self._committed_frames) // block)

    def accept(self, samples: np.ndarray) -> None:
        """Adds 16 kHz mono float32 samples; computes their features, nothing more."""
        self._append_mel(self._features.accept(samples))

    def step(self) -> StepResult:
        """Encodes and decodes the next complete block; call while pending_blocks() > 0."""
        return self._encode_and_decode(*self._next_span())

    def finish(self) -> StepResult:
        """Ends the stream: encodes and decodes everything left, each frame with all the audio
        after it that fits in a step (block + look-ahead frames)."""
        if self._finished:
            raise RuntimeError("the stream is already finished")
        self._finished = True
        self._append_mel(self._features.finish())
        total_mel = self._mel_offset + self._mel.shape[0]
        total = math.ceil(total_mel / self._subsampling)
        committed: list[Any] = []
        # Blocks with their look-ahead first, exactly as a live stream would have run them,
        # so the result does not depend on whether they ran before or after the end.
        while self.pending_blocks():
            committed += self.step().committed
        # What is left is at most a step and a frame: committed in one step where it fits,
        # else a block with its look-ahead, then the rest. (Committing it block by block
        # without look-ahead left the last seconds without what follows them: see the
        # accuracy table in docs/streaming.md.)
        longest = self._settings.block_frames + self._settings.lookahead_frames
        while self._committed_frames < total:
            start = self._committed_frames
            end = total if total - start <= longest else start + self._settings.block_frames
            ahead = min(total, start + longest)
            committed += self._encode_and_decode(start, end, ahead).committed
        self.draft = []
        return StepResult(committed, [])

    def transcript(self, sentence_config: Any, *, word_timestamps: bool) -> Transcript:
        from parakeet_mlx.alignment import sentences_to_result, tokens_to_sentences

        result = sentences_to_result(tokens_to_sentences(list(self.tokens), sentence_config))
        return to_transcript(result, word_timestamps=word_timestamps)

    # -- internals ------------------------------------------------------------------------------

    def _append_mel(self, frames: mx.array) -> None:
        if frames.shape[0] == 0:
            return
        self._mel = mx.concatenate([self._mel, frames], axis=0)

    def _encode_and_decode(self, start: int, end: int, ahead: int) -> StepResult:
        x = self._encode(start, end, ahead)
        mx.eval(x)
        return self._decode_step(x, start, end, ahead)

    def _decode_step(self, x: mx.array, start: int, end: int, ahead: int) -> StepResult:
        """Decodes the encoded frames [start, ahead): committed up to `end`, draft after."""
        committed = self._decode(x[:, : end - start], start, commit=True)
        draft = self._decode(x[:, end - start :], end, commit=False) if ahead > end else []
        self.tokens.extend(committed)
        self.draft = draft
        self._decoded_frames = max(end, ahead)
        return StepResult(committed, draft)

    def _encode(self, start: int, end: int, ahead: int) -> mx.array:
        """Encoder output for frames [start, ahead); frames [start, end) are committed."""
        x = self._embed(start, ahead)
        committed = end - start
        layers = zip(self._encoder.layers, self._caches, strict=True)
        if self._fast is not None:  # a batch of one stream
            keep = self._settings.left_context_frames
            cached = [_cached_frames(self._caches[0])]
            masks = fast_encoder.batch_masks(cached, [x.shape[1]], x.dtype)
            outputs: mx.array | tuple[mx.array, ...] = x
            for layer, cache in layers:
                table = self._positions(layer)
                outputs = _batched_layer(
                    self._fast, layer, [cache], outputs, masks, cached, [committed], table, keep
                )
            x = outputs[0]
        else:
            for layer, cache in layers:
                x = self._stock_layer(layer, cache, x, committed)
        self._advance(end)
        return x

    def _next_span(self) -> tuple[int, int, int]:
        """(start, end, ahead) of the next block: frames [start, end) are committed by it and
        [end, ahead) are its look-ahead."""
        start = self._committed_frames
        end = start + self._settings.block_frames
        return start, end, end + self._settings.lookahead_frames

    def _embed(self, start: int, ahead: int) -> mx.array:
        """The subsampled, scaled input of the conformer layers for frames [start, ahead)."""
        factor = self._subsampling
        mel_start = max(0, (start - _MEL_CONTEXT) * factor)
        mel_stop = min(ahead * factor + factor, self._mel_offset + self._mel.shape[0])
        if mel_stop > self._stats_end:
            # Statistics of exactly the frames up to this window's end: how much more audio
            # has arrived must not change the result.
            fresh = self._mel[self._stats_end - self._mel_offset : mel_stop - self._mel_offset]
            self._normaliser.update(np.array(fresh))
            self._stats_end = mel_stop
        window = self._mel[mel_start - self._mel_offset : mel_stop - self._mel_offset]
        features = self._normaliser(window).astype(self._dtype)[None]
        lengths = mx.array([features.shape[1]])
        if self._fast is not None:
            x, _, _ = self._fast.subsampling(features, None, self._fast.lanes())
        else:
            x, _ = self._encoder.pre_encode(features, lengths)
        first = start - mel_start // factor
        x = x[:, first : first + (ahead - start)]
        if self._encoder.pos_enc is not None:
            x = x * self._encoder.pos_enc.scale
        embedded: mx.array = x
        return embedded

    def _advance(self, end: int) -> None:
        """Frames before `end` are committed: drop the mel that no later window needs."""
        keep_from = max(0, (end - _MEL_CONTEXT) * self._subsampling)
        if keep_from > self._mel_offset:
            self._mel = self._mel[keep_from - self._mel_offset :]
            self._mel_offset = keep_from
        self._committed_frames = end

    def _stock_layer(self, layer: Any, cache: _LayerCache, x: mx.array, committed: int) -> mx.array:
        """One layer step with the stock modules (no fast encoder): caches of one group."""
        x = x + 0.5 * layer.feed_forward1(layer.norm_feed_forward1(x))
        attended, k, v = local_attention(
            layer.self_attn,
            layer.norm_self_att(x),
            None if cache.keys is None else cache.keys[0],
            None if cache.values is None else cache.values[0],
            self._encoder.pos_enc._pe,
            self._positions(layer),
        )
        x = x + attended
        x = x + self._convolution(layer.conv, cache, layer.norm_conv(x), committed)
        x = x + 0.5 * layer.feed_forward2(layer.norm_feed_forward2(x))
        keep = self._settings.left_context_frames
        old_keys = None if cache.keys is None else cache.keys[0]
        old_values = None if cache.values is None else cache.values[0]
        cache.keys = (_keep_last(old_keys, k[:, :committed], keep, axis=1),)
        cache.values = (_keep_last(old_values, v[:, :committed], keep, axis=1),)
        out: mx.array = layer.norm_out(x)
        return out

    def _positions(self, layer: Any) -> tuple[mx.array, int] | None:
        """The layer's projected relative positions for any step of these settings.

        A step has at most block + look-ahead frames and attends to at most the left context
        before them, so one table per layer serves every step (~9% of a step's work saved).
        """
        tables: dict[int, tuple[mx.array, int]] = self._shared.setdefault("positions", {})
        key = id(layer)
        if key not in tables:
            longest = self._settings.block_frames + self._settings.lookahead_frames
            top = self._settings.left_context_frames + longest - 1
            if top + longest > MAX_POSITION_TABLE:
                return None  # unusual settings: project per step instead
            table = project_positions(
                layer.self_attn, self._encoder.pos_enc._pe, -(longest - 1), top, self._dtype
            )
            mx.eval(table)
            tables[key] = (table, top)
        return tables[key]

    def _convolution(self, conv: Any, cache: _LayerCache, x: mx.array, committed: int) -> mx.array:
        y = conv.pointwise_conv1(x)
        y = nn.glu(y, axis=2)
        pad = self._conv_context
        left = cache.conv[0] if cache.conv is not None else mx.zeros((1, pad, y.shape[2]), y.dtype)
        padded = mx.concatenate([left, y, mx.zeros((1, pad, y.shape[2]), y.dtype)], axis=1)
        cache.conv = (mx.concatenate([left, y[:, :committed]], axis=1)[:, -pad:],)
        out = conv.depthwise_conv(padded)
        out = conv.activation(conv.batch_norm(out))
        return conv.pointwise_conv2(out)  # type: ignore[no-any-return]

    def _decode(self, features: mx.array, first_frame: int, *, commit: bool) -> list[Any]:
        if features.shape[1] == 0:
            return []
        state = self._state if commit else copy_state(self._state)
        if self._is_ctc:
            tokens = ctc_greedy(self._model, features, first_frame, state, self._graph)
        else:
            tokens = transducer_greedy(
                self._model, features, first_frame, state, self._is_tdt, self._graph
            )
        return tokens


def step_streams(sessions: list[StreamingSession]) -> list[StepResult]:
    """The next block of each session (each must have one pending), the sessions' blocks
    through the encoder as one batch: each layer's matmuls get every stream's frames at once.

    Per stream the result is what `step()` gives alone, within float tolerance (the batch's
    matmuls sum in another order; caches of different lengths are left-padded and masked).
    Sessions of another model or schedule, or without the fast encoder, step one by one.
    """
    first = sessions[0]
    fast = first._fast
    if (
        len(sessions) < 2
        or fast is None
        or any(s._fast is not fast or s._settings != first._settings for s in sessions)
    ):
        return [session.step() for session in sessions]
    spans = [session._next_span() for session in sessions]
    inputs = [
        session._embed(start, ahead)
        for session, (start, _, ahead) in zip(sessions, spans, strict=True)
    ]
    steps = [x.shape[1] for x in inputs]
    most = max(steps)
    x = mx.concatenate([mx.pad(x, [(0, 0), (0, most - x.shape[1]), (0, 0)]) for x in inputs])
    committed = [end - start for start, end, _ in spans]
    keep = first._settings.left_context_frames
    cached = [_cached_frames(session._caches[0]) for session in sessions]
    masks = fast_encoder.batch_masks(cached, steps, x.dtype)
    outputs: mx.array | tuple[mx.array, ...] = x
    for index, layer in enumerate(first._encoder.layers):
        caches = [session._caches[index] for session in sessions]
        table = first._positions(layer)
        outputs = _batched_layer(
            fast, layer, caches, outputs, masks, cached, committed, table, keep
        )
    x = outputs[0]
    mx.eval(x)
    results = []
    for row, (session, (start, end, ahead)) in enumerate(zip(sessions, spans, strict=True)):
        session._advance(end)
        results.append(session._decode_step(x[row : row + 1, : steps[row]], start, end, ahead))
    return results


def _batched_layer(
    fast: fast_encoder.FastEncoder,
    layer: Any,
    caches: list[_LayerCache],
    x: mx.array | tuple[mx.array, ...],
    masks: tuple[mx.array | None, mx.array | None],
    cached: list[int],
    committed: list[int],
    table: tuple[mx.array, int] | None,
    keep: int,
) -> tuple[mx.array, ...]:
    """One layer step of a batch of streams (or of one): x (B, S, d) (or each lane's copy),
    right-padded past each stream's steps, `masks` (key mask, frame mask) from
    `fast_encoder.batch_masks` for streams with `cached` keys each; each cache gains its
    stream's first `committed` frames. The caches become views of what the layer attended
    to: nothing is copied to keep them. Returns each lane's copy of the output."""
    w = fast.weights_of(layer)
    lanes = fast.lanes()
    streams = fast_encoder.lane_streams(w, lanes)
    key_mask, frame_mask = masks
    past_keys, past_values = _stacked(caches)
    if past_keys is None:
        past_keys, past_values = fast_encoder.stack_past(
            [cache.keys for cache in caches], [cache.values for cache in caches], streams
        )
    past = 0 if past_keys is None else past_keys[0].shape[2]
    first = x[0] if isinstance(x, tuple) else x
    zeros = fast_encoder.conv_zeros(w, 1, first.dtype)
    conv_left = []
    for lane, stream in enumerate(streams):
        with fast_encoder.on_lane(stream):
            lefts = [zeros[lane] if c.conv is None else c.conv[lane] for c in caches]
            conv_left.append(lefts[0] if len(lefts) == 1 else mx.concatenate(lefts))
    left = tuple(conv_left)
    step = fast_encoder.layer_step(
        w,
        x,
        fast.relative_positions(w, past, first.shape[1], table),
        past_keys=past_keys,
        past_values=past_values,
        key_mask=key_mask,
        frame_mask=frame_mask,
        conv_left=left,
        lanes=lanes,
    )
    # Streams that all kept as many keys share one slice of the batch, which the next step
    # of the same streams reads as it is; otherwise each stream's own slice of its row.
    uniform = len(set(cached)) == 1 and len(set(committed)) == 1
    if uniform:
        keys, values = step.kept(cached[0], committed[0], keep)
    for row, (cache, count) in enumerate(zip(caches, committed, strict=True)):
        if not uniform:
            keys, values = step.kept(cached[row], count, keep)
        cache.keys = tuple(k[row] for k in keys)
        cache.values = tuple(v[row] for v in values)
        cache.stacked = (keys, values, row, cache.keys) if uniform else None
        cache.conv = fast_encoder.kept_conv(w, left, step.conv_input, row, count, streams)
    return step.outputs


def _stacked(caches: list[_LayerCache]) -> tuple[Groups | None, Groups | None]:
    """The batch's past keys and values as the last batched step left them, when these are
    the same streams in the same order and none of their caches changed since; else None."""
    first = caches[0].stacked
    if first is None or first[0][0].shape[0] != len(caches):
        return None, None
    for row, cache in enumerate(caches):
        mark = cache.stacked
        if mark is None or mark[0] is not first[0] or mark[2] != row or mark[3] is not cache.keys:
            return None, None
    return first[0], first[1]


def _cached_frames(cache: _LayerCache) -> int:
    return 0 if cache.keys is None else int(cache.keys[0].shape[1])


def _keep_last(old: mx.array | None, new: mx.array, keep: int, axis: int) -> mx.array:
    joined = new if old is None else mx.concatenate([old, new], axis=axis)
    size = joined.shape[axis]
    if size <= keep:
        return joined
    index = [slice(None)] * joined.ndim
    index[axis] = slice(size - keep, size)
    return joined[tuple(index)]


def _leaves(tree: Any) -> list[Any]:
    from mlx.utils import tree_flatten

    flat: list[tuple[str, Any]] = tree_flatten(tree)  # type: ignore[assignment]
    return [value for _, value in flat]


__all__ = [
    "BlockSchedule",
    "StepResult",
    "StreamingSession",
    "local_attention",
    "project_positions",
]
