"""A faster forward of a Parakeet conformer encoder over the model's own weights, in plain MLX.

parakeet-mlx's encoder is written for clarity and for Metal; on CPU at the small row counts of
short requests and stream blocks (M = 26 frames for 2 s of audio) it wastes time around its
matmuls. This module computes the same function (within float tolerance, tested against the
stock module) with fewer and larger operations:

- one matmul for Q, K and V (a concatenated weight, sharing memory with the stock modules);
- residual additions and the feed-forward's 0.5 inside the matmul (`addmm`);
- the conv module's inference BatchNorm folded into the depthwise kernel, and the depthwise
  convolution as nine shifted multiply-adds instead of MLX's grouped conv;
- the relative-position term shifted with a strided view instead of pad/reshape copies;
- the subsampling's 2-D convolutions as strided slices and matmuls (as tools/train_tiny/
  fastconv.py does), in NHWC throughout.

Only weights derived once at load (fused QKV, folded conv kernel) are kept beside the model;
nothing on disk changes. Every operation is a portable MLX op, so it runs on CPU, CUDA and
Metal. It serves the whole-signal encoder (a batch with per-item lengths, padded positions
masked, so each item gets what it would get alone) and one conformer layer step of a live
stream with cached keys/values and convolution context, for one stream or a batch of streams
whose caches differ in length (left-padded and masked).

Set PARAKEET_ENCODER=stock to run parakeet-mlx's own forward instead (comparisons, benches).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx

ENV_VAR = "PARAKEET_ENCODER"
STOCK = "stock"


LANES_ENV_VAR = "PARAKEET_ENCODER_LANES"


def enabled() -> bool:
    """Whether the fast forward is wanted ($PARAKEET_ENCODER is not "stock")."""
    return os.environ.get(ENV_VAR, "fast").strip().lower() != STOCK


def lane_count() -> int:
    """Parallel CPU streams per module: $PARAKEET_ENCODER_LANES, else 2 on 2+ cores."""
    configured = os.environ.get(LANES_ENV_VAR, "").strip()
    if configured:
        return max(1, int(configured))
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def set_blas_threads(count: int) -> bool:
    """Sets OpenBLAS's thread count (when engine/runtime.py loaded OpenBLAS); True if set.

    Lanes run single-threaded matmuls side by side: an OpenBLAS thread pool inside each
    would oversubscribe the cores (its threads spin while they wait for work).
    """
    from parakeet_server.engine.runtime import use_fast_blas

    path = use_fast_blas().path
    if path is None:
        return False
    try:
        setter = ctypes.CDLL(path).openblas_set_num_threads
    except (OSError, AttributeError):
        return False
    setter(count)
    return True


# --- weights ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """y = x @ W.T + bias. `weight` is W (out, in) as nn.Linear/Conv1d store it, or W.T
    (in, out) when `transposed`: then the rows of one range of inputs are contiguous, which
    is what a lane computing a partial sum over its share of the inputs needs."""

    weight: mx.array
    bias: mx.array | None
    transposed: bool = False
    # Ranges of outputs kept as their own contiguous (in, out) matrices, (start, stop, part):
    # what the lanes ask `outputs` for (see `_split_outputs`).
    parts: tuple[tuple[int, int, Linear], ...] = ()

    @property
    def matrix(self) -> mx.array:
        """The right operand of x @ matrix."""
        return self.weight if self.transposed else self.weight.T

    def __call__(self, x: mx.array) -> mx.array:
        if self.bias is None:
            return x @ self.matrix
        return mx.addmm(self.bias, x, self.matrix)

    def add_to(self, residual: mx.array, x: mx.array, scale: float = 1.0) -> mx.array:
        """residual + scale * self(x), the addition done by the matmul (BLAS beta = 1)."""
        if self.bias is not None:
            residual = residual + scale * self.bias
        return mx.addmm(residual, x, self.matrix, alpha=scale)

    def outputs(self, start: int, stop: int) -> Linear:
        """The outputs start..stop: a part kept for them, else a view of the rows of W."""
        for first, last, part in self.parts:
            if (first, last) == (start, stop):
                return part
        assert not self.transposed
        bias = None if self.bias is None else self.bias[start:stop]
        return Linear(self.weight[start:stop], bias)

    def inputs(self, start: int, stop: int) -> Linear:
        """The contribution of inputs start..stop, without the bias: a view of rows of W.T."""
        assert self.transposed
        return Linear(self.weight[start:stop], None, transposed=True)


@dataclass(frozen=True)
class Norm:
    weight: mx.array | None
    bias: mx.array | None
    eps: float

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class LayerWeights:
    """One conformer layer's weights, as the fast forward uses them."""

    norm_ff1: Norm
    ff1_in: Linear
    ff1_out: Linear
    norm_att: Norm
    qkv: Linear  # (3d, d): Q, K and V stacked
    att_out: Linear
    pos: mx.array  # linear_pos weight, (d, d)
    pos_bias_u: mx.array  # (H, dh)
    pos_bias_v: mx.array
    heads: int
    norm_conv: Norm
    pw1: Linear  # (2d, d)
    depthwise: mx.array  # (K, d), BatchNorm folded in
    depthwise_bias: mx.array  # (d,), BatchNorm folded in
    pw2: Linear
    norm_ff2: Norm
    ff2_in: Linear
    ff2_out: Linear
    norm_out: Norm

    @property
    def conv_context(self) -> int:
        return (self.depthwise.shape[0] - 1) // 2


def _linear(module: Any) -> Linear:
    weight = module.weight
    if weight.ndim == 3:  # Conv1d with kernel 1: (out, 1, in)
        weight = weight.reshape(weight.shape[0], weight.shape[2])
    return Linear(weight, module.bias if "bias" in module else None)


def _transposed_linear(module: Any) -> Linear:
    """An nn.Linear's weight stored transposed; the module is given a transposed view of it
    (for x @ weight.T the stock forward then reads the same contiguous matrix), so the copy
    costs no memory beyond the load."""
    transposed = mx.contiguous(module.weight.T)
    mx.eval(transposed)
    module.weight = transposed.T
    mx.eval(module.weight)
    return Linear(transposed, module.bias if "bias" in module else None, transposed=True)


def _split_outputs(linear: Linear, ranges: list[tuple[int, int]]) -> Linear:
    """`linear` (W stored (out, in)) with each range of outputs kept as its own contiguous
    transposed matrix, W[start:stop].T, which the lanes multiply without a transpose flag:
    OpenBLAS runs x @ B ~1.3x faster than x @ W.T at 24-72 rows (bench/encoder.py).

    The parts replace W: `weight` becomes W rebuilt from them, lazily (evaluated only where
    something still reads W whole, e.g. the stock forward in a comparison), so the split
    costs no memory beyond the load.
    """
    assert not linear.transposed
    assert not linear.parts
    parts = []
    for start, stop in ranges:
        block = mx.contiguous(linear.weight[start:stop].T)
        bias = None if linear.bias is None else linear.bias[start:stop]
        parts.append((start, stop, Linear(block, bias, transposed=True)))
    mx.eval([part.weight for _, _, part in parts])
    ordered = sorted(parts, key=lambda item: item[0])
    whole = mx.concatenate([part.weight.T for _, _, part in ordered], axis=0)
    return Linear(whole, linear.bias, parts=tuple(parts))


def _norm(module: Any) -> Norm:
    return Norm(
        module.weight if "weight" in module else None,
        module.bias if "bias" in module else None,
        float(module.eps),
    )


def _fused_qkv(attn: Any) -> Linear:
    """Q, K, V as one (3d, d) matrix; the stock modules are given views into it, so the
    fused copy costs no memory and both paths read the same numbers."""
    parts = (attn.linear_q, attn.linear_k, attn.linear_v)
    weight = mx.concatenate([p.weight for p in parts], axis=0)
    bias = None
    if "bias" in attn.linear_q:
        bias = mx.concatenate([p.bias for p in parts], axis=0)
    mx.eval(weight, bias) if bias is not None else mx.eval(weight)
    d = attn.linear_q.weight.shape[0]
    for index, part in enumerate(parts):
        part.weight = weight[index * d : (index + 1) * d]
        if bias is not None:
            part.bias = bias[index * d : (index + 1) * d]
    mx.eval([p.parameters() for p in parts])
    return Linear(weight, bias)


def _folded_depthwise(conv: Any) -> tuple[mx.array, mx.array]:
    """The depthwise kernel (K, d) and bias with inference BatchNorm folded in."""
    bn = conv.batch_norm
    if bn.training:
        raise ValueError("the fast encoder is for inference: call model.eval() first")
    scale = mx.rsqrt(bn.running_var + bn.eps)
    if "weight" in bn:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if "bias" in bn:
        shift = shift + bn.bias
    dw = conv.depthwise_conv
    kernel = dw.weight[:, :, 0].T * scale  # (d, K, 1) -> (K, d)
    bias = shift + (dw.bias * scale if "bias" in dw else 0.0)
    mx.eval(kernel, bias)
    return kernel, bias


def layer_weights(layer: Any, lanes: int = 1) -> LayerWeights:
    """One layer's weights for the fast forward; with `lanes` > 1, the matrices whose outputs
    the lanes split are kept split (`_split_outputs`) and the stock modules read them back."""
    attn = layer.self_attn
    depthwise, depthwise_bias = _folded_depthwise(layer.conv)
    weights = LayerWeights(
        norm_ff1=_norm(layer.norm_feed_forward1),
        ff1_in=_linear(layer.feed_forward1.linear1),
        ff1_out=_transposed_linear(layer.feed_forward1.linear2),
        norm_att=_norm(layer.norm_self_att),
        qkv=_fused_qkv(attn),
        att_out=_transposed_linear(attn.linear_out),
        pos=attn.linear_pos.weight,
        pos_bias_u=attn.pos_bias_u,
        pos_bias_v=attn.pos_bias_v,
        heads=attn.n_head,
        norm_conv=_norm(layer.norm_conv),
        pw1=_linear(layer.conv.pointwise_conv1),
        depthwise=depthwise,
        depthwise_bias=depthwise_bias,
        pw2=_linear(layer.conv.pointwise_conv2),
        norm_ff2=_norm(layer.norm_feed_forward2),
        ff2_in=_linear(layer.feed_forward2.linear1),
        ff2_out=_transposed_linear(layer.feed_forward2.linear2),
        norm_out=_norm(layer.norm_out),
    )
    if lanes < 2:
        return weights
    shares = Lanes.shares
    d = weights.pw2.weight.shape[0]
    ff1_in = _split_outputs(weights.ff1_in, shares(weights.ff1_in.weight.shape[0], lanes))
    ff2_in = _split_outputs(weights.ff2_in, shares(weights.ff2_in.weight.shape[0], lanes))
    qkv = _split_outputs(weights.qkv, shares(3 * d, lanes))
    glu = shares(d, lanes)
    pw1 = _split_outputs(weights.pw1, glu + [(d + a, d + b) for a, b in glu])
    pw2 = _split_outputs(weights.pw2, glu)
    layer.feed_forward1.linear1.weight = ff1_in.weight
    layer.feed_forward2.linear1.weight = ff2_in.weight
    for index, part in enumerate((attn.linear_q, attn.linear_k, attn.linear_v)):
        part.weight = qkv.weight[index * d : (index + 1) * d]
    for conv, split in ((layer.conv.pointwise_conv1, pw1), (layer.conv.pointwise_conv2, pw2)):
        conv.weight = split.weight.reshape(conv.weight.shape)
    return replace(weights, ff1_in=ff1_in, ff2_in=ff2_in, qkv=qkv, pw1=pw1, pw2=pw2)


# --- one layer ----------------------------------------------------------------------------------


@dataclass
class LayerStep:
    """What one layer computed: its output and what a stream caches for later steps."""

    x: mx.array  # (B, S, d)
    all_keys: mx.array  # (B, H, P + S, dh): the past keys the call attended to, then its own
    all_values: mx.array  # (B, H, P + S, dh)
    conv_input: mx.array  # (B, S, d), the GLU outputs the depthwise conv read (masked)
    steps: int  # S

    @property
    def keys(self) -> mx.array:
        """This call's keys (B, H, S, dh), a view."""
        return self.all_keys[:, :, self.all_keys.shape[2] - self.steps :]

    @property
    def values(self) -> mx.array:
        return self.all_values[:, :, self.all_values.shape[2] - self.steps :]

    def kept(self, cached: int, committed: int, keep: int) -> tuple[mx.array, mx.array]:
        """Every row's cache after this call, as views (no copy), for rows that all had
        `cached` past keys (the rest of P is left padding) and commit their first `committed`
        new ones: the last `keep` of those, keys and values each (B, H, <= keep, dh)."""
        end = self.all_keys.shape[2] - self.steps + committed
        start = max(end - cached - committed, end - keep)
        return self.all_keys[:, :, start:end], self.all_values[:, :, start:end]


def project_positions(w: LayerWeights, rows: mx.array) -> mx.array:
    """linear_pos of sinusoid rows (n, d), highest relative position first, as (H, n, dh)."""
    n = rows.shape[0]
    projected = rows @ w.pos.T
    return projected.reshape(n, w.heads, -1).transpose(1, 0, 2)


def layer_step(
    w: LayerWeights,
    x: mx.array,
    positions: mx.array,
    *,
    past_keys: mx.array | None = None,
    past_values: mx.array | None = None,
    key_mask: mx.array | None = None,
    frame_mask: mx.array | None = None,
    conv_left: mx.array | None = None,
    lanes: Lanes | None = None,
) -> LayerStep:
    """One conformer layer over the frames `x` (B, S, d), attending to past keys and itself.

    `positions` is the layer's projected relative positions (H, n, dh) from the highest
    relative position this call uses, P + S - 1 (P = past keys), down to -(S - 1): exactly
    n = P + 2S - 1 rows; or those sinusoids unprojected, (n, d), to be projected here.
    Query i sits at position P + i, key j at j, for every item: items whose caches are
    shorter are left-padded and masked out by `key_mask`.

    `key_mask` (B, P + S) is an additive float mask (0 or -inf) over past and new keys;
    `frame_mask` (B, S) is 1 for real frames and 0 for padding, which the depthwise conv
    must read as zeros (it reads `conv_left` (B, c, d) on the left, zeros otherwise).
    `lanes` splits each module's work over parallel CPU streams (`default_lanes()`).
    """
    x = feed_forward(w.norm_ff1, w.ff1_in, w.ff1_out, x, lanes)
    steps = x.shape[1]
    x, keys, values = self_attention(w, x, positions, past_keys, past_values, key_mask, lanes)
    x, conv_input = convolution(w, x, frame_mask, conv_left, lanes)
    x = feed_forward(w.norm_ff2, w.ff2_in, w.ff2_out, x, lanes)
    return LayerStep(w.norm_out(x), keys, values, conv_input, steps)


class Lanes:
    """Parallel CPU streams for one thread: each module's matmuls and elementwise work split
    in `count` equal parts (by hidden unit, head or channel), joined once or twice a module.

    At the row counts of short audio (M = 26) OpenBLAS gains little from a second thread
    inside one matmul, while two single-threaded halves on two streams run side by side;
    MLX's elementwise ops, single-threaded per stream, are split too.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.streams = [mx.new_stream(mx.cpu) for _ in range(count)]

    def share(self, size: int, index: int) -> tuple[int, int]:
        return Lanes.shares(size, self.count)[index]

    @staticmethod
    def shares(size: int, count: int) -> list[tuple[int, int]]:
        """Every lane's (start, stop) of `size` units with `count` lanes."""
        part = size // count
        return [(index * part, (index + 1) * part) for index in range(count)]


def feed_forward(
    norm: Norm, lin_in: Linear, lin_out: Linear, x: mx.array, lanes: Lanes | None = None
) -> mx.array:
    """x + 0.5 * FF(norm(x)), the half-step residual added inside the second matmul."""
    h = norm(x)
    if lanes is None:
        return lin_out.add_to(x, _silu(lin_in(h)), 0.5)
    hidden = lin_in.weight.shape[0]
    parts = []
    for index, stream in enumerate(lanes.streams):
        start, stop = lanes.share(hidden, index)
        with mx.stream(stream):
            inner = _silu(lin_in.outputs(start, stop)(h))
            out = lin_out.inputs(start, stop)
            parts.append(out.add_to(x, inner, 0.5) if index == 0 else out(inner))
    return _join_sum(parts, 0.5, lin_out.bias)


def _join_sum(parts: list[mx.array], scale: float, bias: mx.array | None) -> mx.array:
    """parts[0] (which holds the residual) + scale * (the other parts [+ bias])."""
    rest = parts[1]
    for part in parts[2:]:
        rest = rest + part
    if bias is not None:
        rest = rest + bias
    return parts[0] + scale * rest if scale != 1.0 else parts[0] + rest


def self_attention(
    w: LayerWeights,
    x: mx.array,
    positions: mx.array,
    past_keys: mx.array | None = None,
    past_values: mx.array | None = None,
    key_mask: mx.array | None = None,
    lanes: Lanes | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """x + relative-position self-attention of norm(x); also the keys and values it attended
    to, past then this call's, (B, H, P + S, dh). `positions` as for `layer_step`."""
    batch, steps, d = x.shape
    heads = w.heads
    head_dim = d // heads
    h = w.norm_att(x)
    if lanes is None:
        qkv = w.qkv(h)
    else:
        # Q, K, V in equal row ranges of the fused matrix (no head boundaries needed).
        pieces = []
        for index, stream in enumerate(lanes.streams):
            start, stop = lanes.share(3 * d, index)
            with mx.stream(stream):
                pieces.append(w.qkv.outputs(start, stop)(h))
        qkv = mx.concatenate(pieces, axis=-1)
    qkv = qkv.reshape(batch, steps, 3, heads, head_dim)
    q = qkv[:, :, 0]
    k = qkv[:, :, 1].transpose(0, 2, 1, 3)
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)
    keys = k if past_keys is None else mx.concatenate([past_keys, k], axis=2)
    values = v if past_values is None else mx.concatenate([past_values, v], axis=2)
    if lanes is None:
        out = _attend(w, q, keys, values, positions, key_mask, 0, heads)
        return w.att_out.add_to(x, out), keys, values
    parts = []
    for index, stream in enumerate(lanes.streams):
        first, last = lanes.share(heads, index)
        with mx.stream(stream):
            out = _attend(w, q, keys, values, positions, key_mask, first, last)
            proj = w.att_out.inputs(first * head_dim, last * head_dim)
            parts.append(proj.add_to(x, out) if index == 0 else proj(out))
    return _join_sum(parts, 1.0, w.att_out.bias), keys, values


def _attend(
    w: LayerWeights,
    q: mx.array,
    keys: mx.array,
    values: mx.array,
    positions: mx.array,
    key_mask: mx.array | None,
    first: int,
    last: int,
) -> mx.array:
    """Heads first..last of the attention: q (B, S, H, dh), keys/values (B, H, P + S, dh);
    returns (B, S, (last - first) * dh)."""
    batch, steps, _, head_dim = q.shape
    q = q[:, :, first:last]
    keys, values = keys[:, first:last], values[:, first:last]
    if positions.ndim == 2:  # sinusoids (n, d): project this range of heads
        projection = w.pos[first * head_dim : last * head_dim]
        positions = (positions @ projection.T).reshape(-1, last - first, head_dim)
        positions = positions.transpose(1, 0, 2)
    else:
        positions = positions[first:last]
    q_u = (q + w.pos_bias_u[first:last]).transpose(0, 2, 1, 3)
    q_v = (q + w.pos_bias_v[first:last]).transpose(0, 2, 1, 3)
    bd = q_v @ positions.swapaxes(-1, -2)  # (B, h, S, n): by relative position
    scores = q_u @ keys.swapaxes(-1, -2) + _relative_shift(bd, steps, keys.shape[2])
    scores = scores * (1.0 / math.sqrt(head_dim))
    if key_mask is not None:
        scores = scores + key_mask[:, None, None, :]
    weights = mx.softmax(scores, axis=-1, precise=True)
    out = (weights @ values).transpose(0, 2, 1, 3)
    return out.reshape(batch, steps, (last - first) * head_dim)


def convolution(
    w: LayerWeights,
    x: mx.array,
    frame_mask: mx.array | None = None,
    conv_left: mx.array | None = None,
    lanes: Lanes | None = None,
) -> tuple[mx.array, mx.array]:
    """x + the conv module of norm(x): pointwise, GLU, depthwise (BatchNorm folded in),
    SiLU, pointwise. Also the GLU outputs (masked), which a stream keeps as left context."""
    d = x.shape[2]
    h = w.norm_conv(x)
    if lanes is None:
        y, g = _conv_channels(w, h, frame_mask, conv_left, 0, d)
        return w.pw2.add_to(x, y), g
    ys, gs = [], []
    for index, stream in enumerate(lanes.streams):
        start, stop = lanes.share(d, index)
        with mx.stream(stream):
            y, g = _conv_channels(w, h, frame_mask, conv_left, start, stop)
            ys.append(y)
            gs.append(g)
    y = mx.concatenate(ys, axis=-1)
    outs = []
    for index, stream in enumerate(lanes.streams):
        start, stop = lanes.share(d, index)
        with mx.stream(stream):
            outs.append(w.pw2.outputs(start, stop)(y))
    return x + mx.concatenate(outs, axis=-1), mx.concatenate(gs, axis=-1)


def _conv_channels(
    w: LayerWeights,
    h: mx.array,
    frame_mask: mx.array | None,
    conv_left: mx.array | None,
    start: int,
    stop: int,
) -> tuple[mx.array, mx.array]:
    """Channels start..stop of the conv module up to its last pointwise conv: (SiLU output,
    GLU output), each (B, S, stop - start)."""
    batch, steps, d = h.shape
    width = stop - start
    if width == d:
        a, b = mx.split(w.pw1(h), 2, axis=-1)
    else:
        a = w.pw1.outputs(start, stop)(h)
        b = w.pw1.outputs(d + start, d + stop)(h)
    g = _glu(a, b)
    if frame_mask is not None:
        g = g * frame_mask[..., None]
    c = w.conv_context
    zeros = mx.zeros((batch, c, width), g.dtype)
    left = zeros if conv_left is None else conv_left[..., start:stop]
    padded = mx.concatenate([left, g, zeros], axis=1)
    kernel = w.depthwise[:, start:stop]
    y = padded[:, 0:steps] * kernel[0] + w.depthwise_bias[start:stop]
    for tap in range(1, kernel.shape[0]):
        y = y + padded[:, tap : tap + steps] * kernel[tap]
    return _silu(y), g


# MLX's CPU exp/sigmoid/tanh run ~20-28 ns an element on x86 (no SIMD path), more than the
# matmuls around them at small M. tanh as Eigen's rational approximation (clamped where float32
# tanh is +-1; max error 4e-7) in one compiled kernel costs ~5 ns. GPUs keep MLX's own ops.
_TANH_P = (
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
_TANH_CLAMP = 7.90531110763549805


def _tanh(x: mx.array) -> mx.array:
    x = mx.minimum(mx.maximum(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x2 * _TANH_P[0] + _TANH_P[1]
    for c in _TANH_P[2:]:
        p = p * x2 + c
    q = x2 * _TANH_Q[0] + _TANH_Q[1]
    for c in _TANH_Q[2:]:
        q = q * x2 + c
    return x * p / q


def _silu_cpu(x: mx.array) -> mx.array:
    return x * (0.5 + 0.5 * _tanh(0.5 * x))


def _glu_cpu(a: mx.array, b: mx.array) -> mx.array:
    return a * (0.5 + 0.5 * _tanh(0.5 * b))


_silu_compiled = mx.compile(_silu_cpu, shapeless=True)
_glu_compiled = mx.compile(_glu_cpu, shapeless=True)


def _on_cpu() -> bool:
    return bool(mx.default_device() == mx.cpu)


def _silu(x: mx.array) -> mx.array:
    if _on_cpu():
        return _silu_compiled(x)
    return x * mx.sigmoid(x)


def _glu(a: mx.array, b: mx.array) -> mx.array:
    """a * sigmoid(b)."""
    if _on_cpu():
        return _glu_compiled(a, b)
    return a * mx.sigmoid(b)


def _relative_shift(bd: mx.array, steps: int, span: int) -> mx.array:
    """Scores by relative position (B, H, S, n), column c = position P + S - 1 - c, as
    scores by key (B, H, S, P + S): out[i, j] = bd[i, j + S - 1 - i], a strided view."""
    batch, heads, _, n = bd.shape
    return mx.as_strided(
        bd,
        shape=(batch, heads, steps, span),
        strides=(heads * steps * n, steps * n, n - 1, 1),
        offset=steps - 1,
    )


# --- whole-signal encoder -----------------------------------------------------------------------


class FastEncoder:
    """The conformer encoder's forward over `encoder`'s weights (a parakeet-mlx Conformer)."""

    def __init__(self, encoder: Any, lanes: int | None = None) -> None:
        """`lanes`: parallel CPU streams per module (default `lane_count()`; 1: none)."""
        if encoder.args.self_attention_model != "rel_pos":
            raise ValueError("the fast encoder supports rel_pos attention only")
        self.encoder = encoder
        self.lane_count = lane_count() if lanes is None else lanes
        self._thread = threading.local()  # MLX streams belong to the thread that made them
        split = self.lane_count if self.lane_count > 1 and _on_cpu() else 1
        self.layers = [layer_weights(layer, split) for layer in encoder.layers]
        self._by_layer = {
            id(layer): w for layer, w in zip(encoder.layers, self.layers, strict=True)
        }
        self.subsampling = Subsampling(encoder.pre_encode)
        # Derived arrays left lazy would be bound to this thread's stream: evaluate them now.
        mx.eval(_arrays(self.layers), _arrays(self.subsampling.__dict__))

    def lanes(self) -> Lanes | None:
        """This thread's lanes, or None off the CPU or with one lane."""
        if self.lane_count < 2 or not _on_cpu():
            return None
        lanes: Lanes | None = getattr(self._thread, "lanes", None)
        if lanes is None:
            lanes = self._thread.lanes = Lanes(self.lane_count)
        return lanes

    def weights_of(self, layer: Any) -> LayerWeights:
        """The fast weights of one of the encoder's ConformerBlock modules."""
        return self._by_layer[id(layer)]

    def relative_positions(
        self, w: LayerWeights, past: int, steps: int, table: tuple[mx.array, int] | None = None
    ) -> mx.array:
        """The layer's positions P + S - 1 .. -(S - 1) for `layer_step`: projected, (H, n, dh),
        from `table`, a precomputed projection (H, m, dh) whose first row is relative position
        `top` (streaming.py's per-layer table); else the sinusoids (n, d), projected there.
        """
        highest, lowest = past + steps - 1, -(steps - 1)
        if table is not None:
            projected, top = table
            return projected[:, top - highest : top - lowest + 1]
        pe = self.encoder.pos_enc._pe
        centre = pe.shape[1] // 2
        rows: mx.array = pe[0, centre - highest : centre - lowest + 1].astype(w.pos.dtype)
        return rows

    def stream_layer(
        self,
        layer: Any,
        cache: Any,
        x: mx.array,
        committed: int,
        table: tuple[mx.array, int] | None,
        keep: int,
    ) -> mx.array:
        """streaming.py's `_layer` for one stream (x is (1, S, d)): one layer step over the
        stream's cached keys/values (H, P, dh) and conv context (1, c, d) in `cache`, which
        gains the first `committed` frames' keys, values and conv inputs (at most `keep`
        keys are kept)."""
        w = self.weights_of(layer)
        steps = x.shape[1]
        past = 0 if cache.keys is None else cache.keys.shape[1]
        step = layer_step(
            w,
            x,
            self.relative_positions(w, past, steps, table),
            past_keys=None if cache.keys is None else cache.keys[None],
            past_values=None if cache.values is None else cache.values[None],
            conv_left=cache.conv,
            lanes=self.lanes(),
        )
        keys, values = step.kept(past, committed, keep)
        cache.keys, cache.values = keys[0], values[0]
        c = w.conv_context
        left = cache.conv if cache.conv is not None else mx.zeros((1, c, x.shape[2]), x.dtype)
        cache.conv = mx.concatenate([left, step.conv_input[:, :committed]], axis=1)[:, -c:]
        return step.x

    def positions(self, steps: int, dtype: Any) -> mx.array:
        """Sinusoids for relative positions steps-1 .. -(steps-1), (2 steps - 1, d)."""
        pos_enc = self.encoder.pos_enc
        _, pos_emb = pos_enc(mx.zeros((1, steps, 1), dtype))  # grows its table if needed
        rows: mx.array = pos_emb[0]
        return rows

    def __call__(
        self, features: mx.array, lengths: mx.array | None = None
    ) -> tuple[mx.array, mx.array]:
        """Like `Conformer.__call__`: mel (B, T, mels) -> (encoded (B, T', d), lengths (B,)).

        With `lengths`, frames past each item's length are masked everywhere they could
        leak into real frames (subsampling, attention keys, depthwise conv): each item gets
        what it would get alone. The stock module ignores lengths beyond returning them.
        """
        lanes = self.lanes()
        x, out_lengths, frame_mask = self.subsampling(features, lengths, lanes)
        scale = self.encoder.pos_enc.scale
        if scale != 1.0:
            x = x * scale
        steps = x.shape[1]
        key_mask = None
        if frame_mask is not None:
            key_mask = mx.where(frame_mask > 0, 0.0, -mx.inf).astype(x.dtype)
        rows = self.positions(steps, x.dtype)
        for w in self.layers:
            step = layer_step(w, x, rows, key_mask=key_mask, frame_mask=frame_mask, lanes=lanes)
            x = step.x
        return x, out_lengths


def _arrays(tree: Any) -> list[mx.array]:
    """Every array in dataclasses, dicts, lists and tuples of them."""
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, Linear) and tree.parts:  # its whole weight stays lazy
        return [array for _, _, part in tree.parts for array in _arrays(part)]
    if isinstance(tree, dict):
        tree = list(tree.values())
    elif hasattr(tree, "__dataclass_fields__"):
        tree = [getattr(tree, name) for name in tree.__dataclass_fields__]
    if isinstance(tree, (list, tuple)):
        return [array for item in tree for array in _arrays(item)]
    return []


# --- a batch of streams -------------------------------------------------------------------------


def batch_masks(cached: list[int], steps: list[int], dtype: Any) -> tuple[mx.array, mx.array]:
    """(key_mask (B, P + S) additive, frame_mask (B, S)) for streams with `cached` keys each
    (left-padded to P = max) and `steps` new frames each (right-padded to S = max). Every
    layer of a step has the same cache lengths, so one pair serves all of them."""
    past, most = max(cached), max(steps)
    valid = mx.stack(
        [
            mx.concatenate([mx.arange(past) >= past - have, mx.arange(most) < count])
            for have, count in zip(cached, steps, strict=True)
        ]
    )
    key_mask = mx.where(valid, 0.0, -mx.inf).astype(dtype)
    return key_mask, valid[:, past:].astype(dtype)


def stack_past(
    keys: list[mx.array | None], values: list[mx.array | None]
) -> tuple[mx.array | None, mx.array | None]:
    """Per-stream caches (H, P_b, dh) as one (B, H, P, dh) pair, left-padded with zeros to
    P = max P_b (None, None while no stream has any)."""
    ref = next((k for k in keys if k is not None), None)
    if ref is None:
        return None, None
    heads, _, head_dim = ref.shape
    past = max(0 if k is None else k.shape[1] for k in keys)

    def padded(cache: mx.array | None) -> mx.array:
        have = 0 if cache is None else cache.shape[1]
        if have == past:
            assert cache is not None
            return cache
        gap = mx.zeros((heads, past - have, head_dim), ref.dtype)
        return gap if cache is None else mx.concatenate([gap, cache], axis=1)

    return mx.stack([padded(k) for k in keys]), mx.stack([padded(v) for v in values])


# --- subsampling --------------------------------------------------------------------------------


class Subsampling:
    """dw_striding subsampling (3x3 stride-2 convs) as strided slices and matmuls, NHWC."""

    def __init__(self, pre_encode: Any) -> None:
        self._stages: list[tuple[str, mx.array, mx.array | None]] = []
        for layer in pre_encode.conv:
            if "weight" not in layer:  # the ReLUs between convolutions
                self._stages.append(("relu", mx.array(0), None))
                continue
            weight = layer.weight  # (out, kh, kw, in / groups)
            out_channels, kh, kw, per_group = weight.shape
            bias = layer.bias if "bias" in layer else None
            if kh == 1 and kw == 1:
                self._stages.append(("pointwise", weight.reshape(out_channels, per_group), bias))
            elif per_group == 1 and out_channels > 1 and layer.groups == out_channels:
                self._stages.append(("depthwise", weight.reshape(out_channels, 9).T, bias))
            else:
                kernel = weight.reshape(out_channels, kh * kw * per_group)
                self._stages.append(("dense", kernel, bias))
        self._stride_stages = pre_encode._sampling_num
        self.out = _linear(pre_encode.out)

    def __call__(
        self, features: mx.array, lengths: mx.array | None, lanes: Lanes | None = None
    ) -> tuple[mx.array, mx.array, mx.array | None]:
        """mel (B, T, F) -> (x (B, T', d), lengths (B,), frame mask (B, T') or None).

        With `lanes`, each lane computes a range of output frames from a window of the mel
        with 2 frames of context on the left and 1 on the right (as streaming.py does): the
        strided convolutions then see what they see in the whole signal (the windows start
        at multiples of the subsampling factor, so strides stay in phase).
        """
        batch, frames, _ = features.shape
        if lengths is None:
            lengths = mx.full((batch,), frames, dtype=mx.int32)
        # Per-item lengths after each stride-2 stage, as parakeet-mlx computes them.
        stage_lengths = [lengths.astype(mx.int32)]
        for _ in range(self._stride_stages):
            stage_lengths.append((stage_lengths[-1] - 1) // 2 + 1)
        masked = bool(mx.any(lengths < frames).item())
        masks = stage_lengths if masked else None
        steps = frames
        for _ in range(self._stride_stages):
            steps = (steps - 1) // 2 + 1
        factor = 2**self._stride_stages
        if lanes is None or steps < 4 * lanes.count:
            x = self._window(features, masks, 0)
        else:
            pieces = []
            for index, stream in enumerate(lanes.streams):
                first, last = lanes.share(steps, index)
                if index == lanes.count - 1:
                    last = steps
                start = max(0, (first - 2) * factor)
                stop = min(frames, (last + 1) * factor)
                with mx.stream(stream):
                    y = self._window(features[:, start:stop], masks, start)
                    skip = first - start // factor
                    pieces.append(y[:, skip : skip + last - first])
            x = mx.concatenate(pieces, axis=1)
        out_lengths = stage_lengths[-1]
        frame_mask = _time_mask(out_lengths, steps, x.dtype) if masked else None
        return x, out_lengths, frame_mask

    def _window(self, features: mx.array, masks: list[mx.array] | None, start: int) -> mx.array:
        """The subsampled frames of mel frames start.. (a multiple of the factor), (B, n, d);
        `masks`: per-stage lengths to zero padding with, else None."""
        x = features[..., None]  # (B, T, F, 1)
        if masks is not None:  # padding must read as the zeros the convolutions pad with
            x = x * _time_mask(masks[0], x.shape[1], x.dtype, start)[:, :, None, None]
        stage = 0
        for kind, kernel, bias in self._stages:
            if kind == "relu":
                x = mx.maximum(x, 0)
                if masks is not None:
                    offset = start >> stage
                    mask = _time_mask(masks[stage], x.shape[1], x.dtype, offset)
                    x = x * mask[:, :, None, None]
                continue
            if kind == "pointwise":
                x = x @ kernel.T if bias is None else mx.addmm(bias, x, kernel.T)
                continue
            taps = _taps(x)
            stage += 1
            if kind == "depthwise":
                y = taps[0] * kernel[0]
                for k in range(1, 9):
                    y = y + taps[k] * kernel[k]
                x = y if bias is None else y + bias
            else:
                patches = mx.concatenate(taps, axis=-1)
                x = patches @ kernel.T if bias is None else mx.addmm(bias, patches, kernel.T)
        # (B, T', F', C) -> (B, T', C * F'), the stock module's (channel, frequency) order.
        batch, steps, freq, channels = x.shape
        x = x.transpose(0, 1, 3, 2).reshape(batch, steps, channels * freq)
        return self.out(x)


def _time_mask(lengths: mx.array, steps: int, dtype: Any, offset: int = 0) -> mx.array:
    """1 for frames offset..offset+steps below each item's length, else 0: (B, steps)."""
    return (mx.arange(offset, offset + steps)[None, :] < lengths[:, None]).astype(dtype)


def _taps(x: mx.array) -> list[mx.array]:
    """The nine 3x3 stride-2 taps of NHWC `x` zero-padded by 1, each (B, H', W', C)."""
    _, h, w, _ = x.shape
    out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    return [
        padded[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2, :]
        for i in range(3)
        for j in range(3)
    ]


# --- installing on a model ----------------------------------------------------------------------


def install(model: Any) -> FastEncoder | None:
    """Makes `model.encoder(...)` (and so `model.generate`) run the fast forward.

    Only this instance changes (its class is swapped for a subclass); the weights are the
    model's own. Returns None and changes nothing when $PARAKEET_ENCODER=stock or the
    encoder is of a kind this module does not handle.
    """
    encoder = model.encoder
    if isinstance(encoder, _FastConformer):
        return encoder._fast
    if not enabled():
        return None
    try:
        fast = FastEncoder(encoder)
    except ValueError:
        return None
    if fast.lane_count > 1 and _on_cpu():
        set_blas_threads(1)
    encoder._fast = fast  # a plain attribute, not a parameter (not an array)
    encoder.__class__ = _fast_class(type(encoder))
    return fast


def uninstall(model: Any) -> None:
    """Restores the stock forward on `model.encoder`."""
    encoder = model.encoder
    if isinstance(encoder, _FastConformer):
        encoder.__class__ = encoder._stock_class


def fast_encoder_of(model: Any) -> FastEncoder | None:
    """The FastEncoder installed on `model`, if any."""
    encoder = model.encoder
    return encoder._fast if isinstance(encoder, _FastConformer) else None


class _FastConformer:
    """Marker base of the swapped-in encoder classes."""

    _fast: FastEncoder
    _stock_class: type


_FAST_CLASSES: dict[type, type] = {}


def _fast_class(stock: type) -> type:
    if stock not in _FAST_CLASSES:

        def __call__(
            self: Any, x: mx.array, lengths: mx.array | None = None, cache: Any = None
        ) -> tuple[mx.array, mx.array]:
            if cache is not None:  # parakeet-mlx's own streaming: not ours
                return stock.__call__(self, x, lengths, cache)  # type: ignore[no-any-return]
            return self._fast(x, lengths)  # type: ignore[no-any-return]

        _FAST_CLASSES[stock] = type(
            f"Fast{stock.__name__}",
            (stock, _FastConformer),
            {"__call__": __call__, "_stock_class": stock},
        )
    return _FAST_CLASSES[stock]


__all__ = [
    "ENV_VAR",
    "LANES_ENV_VAR",
    "FastEncoder",
    "Lanes",
    "LayerStep",
    "LayerWeights",
    "batch_masks",
    "enabled",
    "fast_encoder_of",
    "install",
    "lane_count",
    "layer_step",
    "layer_weights",
    "project_positions",
    "set_blas_threads",
    "stack_past",
    "uninstall",
]
