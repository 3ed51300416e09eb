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
  blocks; the look-ahead frames are decoded into a draft that the next block replaces.

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

from parakeet_server.engine import fast_encoder
from parakeet_server.engine import settings as engine_settings
from parakeet_server.engine.settings import StreamingSettings
from parakeet_server.transcript import Transcript


def samples_needed(preprocessor: Any, subsampling: int, frames: int) -> int:
    """Input samples after which encoder frame `frames - 1` has its whole receptive field."""
    return engine_settings.samples_needed(
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


# --- features -----------------------------------------------------------------------------------


class MelProjection:
    """`magnitude @ filterbank.T` in which each frame's result depends on that frame alone.

    A matmul's last bits depend on how many rows it is given (BLAS blocks and splits them
    differently), so a stream whose audio came in other messages got other features: ~9% of
    them differed in the last bit, enough to change a confidence. Each mel filter covers a few
    adjacent FFT bins (12 for the 128-mel models, 18 for 80), so the projection is a short sum
    over bands, in elementwise numpy operations in a fixed order: the same bits for a frame
    whatever frames are computed with it. Cost, measured for 30 s of 128-mel frames: 12 ms
    against 5 ms for the matmul, and `log_mel` went from 54 to 58 ms (MLX's CPU gather took
    130 ms for the same sum).
    """

    def __init__(self, filterbank: np.ndarray) -> None:
        mels, bins = filterbank.shape
        nonzero = filterbank != 0
        first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
        last = np.where(nonzero.any(axis=1), bins - nonzero[:, ::-1].argmax(axis=1), 0)
        rows = np.arange(mels)
        self._terms: list[tuple[np.ndarray, np.ndarray]] = []
        for offset in range(int((last - first).max(initial=0))):
            column = np.minimum(first + offset, bins - 1)
            weight = np.where(first + offset < last, filterbank[rows, column], 0.0)
            self._terms.append((column, weight.astype(np.float32)))
        self.size = mels

    def __call__(self, magnitude: np.ndarray) -> np.ndarray:
        """(T, bins) -> (T, mels), float32."""
        out = np.zeros((magnitude.shape[0], self.size), np.float32)
        for column, weight in self._terms:
            out += magnitude[:, column] * weight
        return out


class StreamingFeatures:
    """Log-mel frames of a growing signal, each computed once, equal to parakeet-mlx's STFT.

    parakeet-mlx (`get_logmel`) pre-emphasises, reflect-pads n_fft/2 samples at both ends,
    frames every hop with a `win_length` window, and takes |re|+|im| squared through the mel
    filterbank. Frames whose window lies inside the signal are final as soon as their samples
    arrive; the last few wait for the end-of-stream reflection.
    """

    def __init__(self, preprocessor: Any) -> None:
        self._args = preprocessor
        self._hop = preprocessor.hop_length
        self._win = preprocessor.win_length
        self._pad = preprocessor.n_fft // 2
        from parakeet_mlx.audio import bartlett, blackman, hamming, hanning

        windows = {"hann": hanning, "hanning": hanning, "hamming": hamming}
        windows.update({"blackman": blackman, "bartlett": bartlett})
        self._window = windows[preprocessor.window](self._win).astype(mx.float32)
        self._project = MelProjection(np.array(preprocessor._filterbanks, dtype=np.float32))
        self._head: np.ndarray = np.zeros(0, np.float32)  # raw samples until the pad is known
        self._signal = np.zeros(0, np.float32)  # padded, pre-emphasised, from frame `_next`
        self._offset = 0  # index in the padded signal of self._signal[0]
        self._next = 0  # next frame to compute
        self._last_raw = 0.0
        self._samples = 0
        self._started = False

    @property
    def samples(self) -> int:
        return self._samples

    def _emphasise(self, samples: np.ndarray) -> np.ndarray:
        preemph = self._args.preemph
        if preemph is None or samples.size == 0:
            return samples.astype(np.float32, copy=False)
        previous = np.concatenate([[self._last_raw], samples[:-1]]).astype(np.float32)
        out = samples - np.float32(preemph) * previous
        if self._samples == 0:
            out[0] = samples[0]  # the first sample passes unchanged
        return np.asarray(out, dtype=np.float32)

    def accept(self, samples: np.ndarray) -> mx.array:
        """Adds samples; returns the raw (unnormalised) log-mel frames now complete, (T, mels)."""
        emphasised = self._emphasise(samples)
        if samples.size:
            self._last_raw = float(samples[-1])
        self._samples += samples.size
        if not self._started:
            self._head = np.concatenate([self._head, emphasised])
            if self._head.size <= self._pad:
                return self._empty()
            # Reflect padding at the start needs samples 1..pad of the signal.
            prefix = self._head[1 : self._pad + 1][::-1]
            self._signal = np.concatenate([prefix, self._head])
            self._head = np.zeros(0, np.float32)
            self._started = True
        else:
            self._signal = np.concatenate([self._signal, emphasised])
        return self._frames(final=False)

    def finish(self) -> mx.array:
        """Ends the signal; returns the last frames (with the end reflection)."""
        if not self._started:
            return self._empty()  # shorter than the pad: too short for the model anyway
        tail = self._signal[-(self._pad + 1) : -1][::-1]
        self._signal = np.concatenate([self._signal, tail])
        return self._frames(final=True)

    def _empty(self) -> mx.array:
        return mx.zeros((0, self._project.size), mx.float32)

    def _frames(self, *, final: bool) -> mx.array:
        total = (self._samples + 2 * self._pad - self._win + self._hop) // self._hop
        available = (self._offset + self._signal.size - self._win) // self._hop + 1
        end = total if final else min(available, total)
        count = end - self._next
        if count <= 0:
            return self._empty()
        start = self._next * self._hop - self._offset
        windows = np.lib.stride_tricks.sliding_window_view(self._signal, self._win)
        frames = mx.array(windows[start : start + (count - 1) * self._hop + 1 : self._hop])
        frames = frames * self._window
        spectrum = mx.fft.rfft(frames, n=self._args.n_fft)
        magnitude = mx.abs(mx.real(spectrum)) + mx.abs(mx.imag(spectrum))
        if self._args.mag_power != 1.0:
            magnitude = mx.power(magnitude, self._args.mag_power)
        mel = mx.log(mx.array(self._project(np.array(magnitude, dtype=np.float32))) + 1e-5)
        self._next = end
        keep_from = self._next * self._hop - self._offset
        self._signal = self._signal[keep_from:]
        self._offset += keep_from
        return mel


def log_mel(samples: np.ndarray, preprocessor: Any) -> mx.array:
    """parakeet-mlx's `get_logmel` features of a whole signal, (1, T, mels).

    Numerically the same (tested), but `get_logmel`'s STFT frames the padded signal with
    `as_strided` and reads up to 112 samples past its end (multiplied by the zero tail of the
    window); on a buffer ending at a page boundary that is a segfault, seen once in CI on a 45 s
    request. Framing here never leaves the signal.
    """
    if preprocessor.pad_to > 0 and samples.size < preprocessor.pad_to:
        padding = np.full(preprocessor.pad_to - samples.size, preprocessor.pad_value, np.float32)
        samples = np.concatenate([samples, padding])
    features = StreamingFeatures(preprocessor)
    raw = mx.concatenate([features.accept(samples), features.finish()])
    if preprocessor.normalize == "per_feature":
        mean, std = mx.mean(raw, axis=0), mx.std(raw, axis=0)
    else:
        mean, std = mx.mean(raw), mx.std(raw)
    normalised: mx.array = ((raw - mean) / (std + 1e-5))[None]
    return normalised


class RunningNormaliser:
    """Per-feature mean/std normalisation with statistics of the frames given to update()."""

    def __init__(self, features: int) -> None:
        self._count = 0
        self._sum = np.zeros(features, np.float64)
        self._squares = np.zeros(features, np.float64)

    def update(self, frames: np.ndarray) -> None:
        self._count += frames.shape[0]
        self._sum += frames.sum(axis=0)
        self._squares += np.square(frames, dtype=np.float64).sum(axis=0)

    def __call__(self, frames: mx.array) -> mx.array:
        mean = self._sum / max(self._count, 1)
        variance = np.maximum(self._squares / max(self._count, 1) - mean**2, 0.0)
        std = np.sqrt(variance)
        normalised: mx.array = (frames - mx.array(mean, mx.float32)) / (
            mx.array(std, mx.float32) + 1e-5
        )
        return normalised


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


# Relative positions per precomputed table (4 MB per layer at d_model 1024).
MAX_POSITION_TABLE = 1024


@dataclass
class _LayerCache:
    keys: mx.array | None = None
    values: mx.array | None = None
    conv: mx.array | None = None  # GLU outputs of the last committed frames, (1, k-1/2, d)


@dataclass
class _DecoderState:
    last_token: int | None = None
    hidden: Any = None
    overshoot: int = 0  # TDT durations may jump past a block's end
    previous_ctc: int = -1


class StreamingSession:
    """One live stream: feed samples, read committed and draft tokens, finish.

    Not thread-safe: like the model, use it from the model thread only.
    """

    def __init__(
        self,
        model: Any,
        settings: StreamingSettings | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        from parakeet_mlx import ParakeetCTC, ParakeetRNNT, ParakeetTDT

        self._model = model
        self._settings = settings or StreamingSettings()
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
        self._state = _DecoderState()
        self._is_ctc = isinstance(model, ParakeetCTC)
        self._is_tdt = isinstance(model, ParakeetTDT)
        if not (self._is_ctc or self._is_tdt or isinstance(model, ParakeetRNNT)):
            raise ValueError(f"{type(model).__name__} cannot stream")
        self._dtype = next(iter(_leaves(model.parameters()))).dtype
        self.tokens: list[Any] = []
        self.draft: list[Any] = []
        self._finished = False

    @property
    def samples(self) -> int:
        return self._features.samples

    @property
    def committed_seconds(self) -> float:
        return float(self._committed_frames * self._model.time_ratio)

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
        start = self._committed_frames
        end = start + self._settings.block_frames
        return self._encode_and_decode(start, end, end + self._settings.lookahead_frames)

    def finish(self) -> StepResult:
        """Ends the stream: encodes and decodes everything left, with no look-ahead."""
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
        while self._committed_frames < total:
            end = min(self._committed_frames + self._settings.block_frames, total)
            committed += self._encode_and_decode(self._committed_frames, end, end).committed
        self.draft = []
        return StepResult(committed, [])

    def transcript(self, sentence_config: Any, *, word_timestamps: bool) -> Transcript:
        from parakeet_mlx.alignment import sentences_to_result, tokens_to_sentences

        from parakeet_server.engine.model import to_transcript

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
        committed = self._decode(x[:, : end - start], start, commit=True)
        draft = self._decode(x[:, end - start :], end, commit=False) if ahead > end else []
        self.tokens.extend(committed)
        self.draft = draft
        return StepResult(committed, draft)

    def _encode(self, start: int, end: int, ahead: int) -> mx.array:
        """Encoder output for frames [start, ahead); frames [start, end) are committed."""
        factor = self._subsampling
        # Two frames of left context and one of right context make the strided convolutions
        # see what they would in the whole signal; zero padding only at the true edges.
        context = 2
        mel_start = max(0, (start - context) * factor)
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
        committed = end - start
        for layer, cache in zip(self._encoder.layers, self._caches, strict=True):
            x = self._layer(layer, cache, x, committed)
        # Drop mel that no later window needs.
        keep_from = max(0, (end - context) * factor)
        if keep_from > self._mel_offset:
            self._mel = self._mel[keep_from - self._mel_offset :]
            self._mel_offset = keep_from
        self._committed_frames = end
        encoded: mx.array = x
        return encoded

    def _layer(self, layer: Any, cache: _LayerCache, x: mx.array, committed: int) -> mx.array:
        if self._fast is not None:
            keep = self._settings.left_context_frames
            return self._fast.stream_layer(layer, cache, x, committed, self._positions(layer), keep)
        x = x + 0.5 * layer.feed_forward1(layer.norm_feed_forward1(x))
        attended, k, v = local_attention(
            layer.self_attn,
            layer.norm_self_att(x),
            cache.keys,
            cache.values,
            self._encoder.pos_enc._pe,
            self._positions(layer),
        )
        x = x + attended
        x = x + self._convolution(layer.conv, cache, layer.norm_conv(x), committed)
        x = x + 0.5 * layer.feed_forward2(layer.norm_feed_forward2(x))
        keep = self._settings.left_context_frames
        cache.keys = _keep_last(cache.keys, k[:, :committed], keep, axis=1)
        cache.values = _keep_last(cache.values, v[:, :committed], keep, axis=1)
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
        y = nn.glu(y, axis=2)  # type: ignore[attr-defined]
        pad = self._conv_context
        left = cache.conv if cache.conv is not None else mx.zeros((1, pad, y.shape[2]), y.dtype)
        padded = mx.concatenate([left, y, mx.zeros((1, pad, y.shape[2]), y.dtype)], axis=1)
        cache.conv = mx.concatenate([left, y[:, :committed]], axis=1)[:, -pad:]
        out = conv.depthwise_conv(padded)
        out = conv.activation(conv.batch_norm(out))
        return conv.pointwise_conv2(out)  # type: ignore[no-any-return]

    def _decode(self, features: mx.array, first_frame: int, *, commit: bool) -> list[Any]:
        if features.shape[1] == 0:
            return []
        state = self._state if commit else _copy_state(self._state)
        if self._is_ctc:
            tokens = _ctc_greedy(self._model, features, first_frame, state)
        else:
            tokens = _transducer_greedy(self._model, features, first_frame, state, self._is_tdt)
        return tokens


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


def _copy_state(state: _DecoderState) -> _DecoderState:
    return _DecoderState(state.last_token, state.hidden, state.overshoot, state.previous_ctc)


def _confidence(logits: mx.array) -> float:
    """parakeet-mlx's entropy-based confidence of one token distribution."""
    probs = mx.softmax(logits, axis=-1)
    entropy = -mx.sum(probs * mx.log(probs + 1e-10), axis=-1)
    return float(1.0 - entropy / math.log(logits.shape[-1]))


def _transducer_greedy(
    model: Any, features: mx.array, first_frame: int, state: _DecoderState, tdt: bool
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


def _ctc_greedy(
    model: Any, features: mx.array, first_frame: int, state: _DecoderState
) -> list[Any]:
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


__all__ = [
    "StepResult",
    "StreamingFeatures",
    "StreamingSession",
    "StreamingSettings",
    "local_attention",
    "log_mel",
    "project_positions",
]
