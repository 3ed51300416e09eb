"""A faster forward of a Parakeet conformer encoder over the model's own weights, in plain MLX.

parakeet-mlx's encoder is written for clarity and for Metal; on CPU at the small row counts of
short requests and stream blocks (M = 26 frames for 2 s of audio) it wastes time around its
matmuls. This module computes the same function (within float tolerance, tested against the
stock module) with fewer and larger operations:

- one matmul for Q, K and V (a concatenated weight, sharing memory with the stock modules);
- residual additions and the feed-forward's 0.5 inside the matmul (`addmm`), or, with
  lanes, in one compiled kernel that adds up the lanes' partial outputs;
- the conv module's inference BatchNorm folded into the depthwise kernel, and the depthwise
  convolution as nine shifted multiply-adds instead of MLX's grouped conv;
- the relative-position term shifted with a strided view instead of pad/reshape copies, and
  added, scaled and masked in one compiled kernel;
- the subsampling's 2-D convolutions as strided slices and matmuls (as tools/train_tiny/
  fastconv.py does), in NHWC throughout;
- on CPU, "lanes": each module split over two CPU streams as tensor parallelism (each lane
  its share of hidden units, heads and channels, end to end, meeting once per module).

Only weights derived once at load (each lane's share of a matrix, transposed; the folded
conv kernel) are kept beside the model, whose modules read the same numbers back; nothing on
disk changes. Every operation is a portable MLX op, so it runs on CPU, CUDA and
Metal. It serves the whole-signal encoder (a batch with per-item lengths, padded positions
masked, so each item gets what it would get alone) and one conformer layer step of a live
stream with cached keys/values and convolution context, for one stream or a batch of streams
whose caches differ in length (left-padded and masked).

Set PARAKEET_ENCODER=stock to run parakeet-mlx's own forward instead (comparisons, benches).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import threading
from dataclasses import dataclass
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
    (in, out) when `transposed`: OpenBLAS multiplies x @ B ~1.3x faster than x @ W.T at
    24-72 rows, and the rows of W.T for a range of inputs are contiguous, which is what a
    lane computing a partial sum over its share of the inputs needs."""

    weight: mx.array
    bias: mx.array | None
    transposed: bool = False

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


@dataclass(frozen=True)
class Norm:
    weight: mx.array | None
    bias: mx.array | None
    eps: float

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class LaneWeights:
    """What one lane multiplies: its share of every module's hidden units, heads and conv
    channels, end to end, so that lanes meet once per module (a sum of their partial
    outputs). With one lane, the share is everything."""

    ff1_in: Linear  # the lane's hidden units, (d, n) transposed, with their bias
    ff1_out: Linear  # their rows of W2.T, (n, d), without the bias
    qkv: Linear  # Q, K and V of the lane's heads, (d, 3 h dh) transposed, with biases
    att_out: Linear  # the rows of Wo.T for those heads, without the bias
    heads: tuple[int, int]
    pos_bias_u: mx.array  # (h, dh)
    pos_bias_v: mx.array
    pw1: Linear  # the lane's GLU channels, a then b, (d, 2c) transposed, with biases
    depthwise: mx.array  # (K, c), BatchNorm folded in
    depthwise_bias: mx.array  # (c,), BatchNorm folded in
    pw2: Linear  # the rows of Wpw2.T for those channels, without the bias
    channels: tuple[int, int]
    ff2_in: Linear
    ff2_out: Linear


@dataclass(frozen=True)
class LayerWeights:
    """One conformer layer's weights, as the fast forward uses them: the norms and the
    biases of the modules' outputs (added once, after the lanes' partial sums) here, the
    matrices split by lane in `lanes`."""

    norm_ff1: Norm
    ff1_bias: mx.array | None
    norm_att: Norm
    att_bias: mx.array | None
    pos: mx.array  # linear_pos weight, (d, d)
    heads: int
    norm_conv: Norm
    pw2_bias: mx.array | None
    kernel_size: int
    norm_ff2: Norm
    ff2_bias: mx.array | None
    norm_out: Norm
    lanes: tuple[LaneWeights, ...]

    @property
    def conv_context(self) -> int:
        return (self.kernel_size - 1) // 2


def _linear(module: Any) -> Linear:
    weight = module.weight
    if weight.ndim == 3:  # Conv1d with kernel 1: (out, 1, in)
        weight = weight.reshape(weight.shape[0], weight.shape[2])
    return Linear(weight, module.bias if "bias" in module else None)


def _bias(module: Any) -> mx.array | None:
    return module.bias if "bias" in module else None


def _matrix(module: Any) -> mx.array:
    """A Linear's or kernel-1 Conv1d's weight as (out, in)."""
    weight: mx.array = module.weight
    return weight.reshape(weight.shape[0], weight.shape[-1]) if weight.ndim == 3 else weight


def _give_back(module: Any, whole: mx.array) -> None:
    """The stock module reads `whole` (out, in), in its own layout."""
    module.weight = whole.reshape(module.weight.shape) if module.weight.ndim == 3 else whole


def _by_outputs(
    weight: mx.array, bias: mx.array | None, groups: list[list[tuple[int, int]]]
) -> tuple[list[Linear], mx.array]:
    """Each group's rows of `weight` (out, in), the given ranges one after another, as one
    contiguous transposed matrix (in, n) with the bias of those rows; and `weight` rebuilt
    from the parts for the stock module: with one part covering it, a transposed view of
    that part (no copy); else lazily, evaluated only where the stock forward runs (so
    splitting costs no memory beyond the load)."""
    parts = []
    pieces: list[tuple[int, mx.array]] = []
    for ranges in map(_merged, groups):
        block = mx.contiguous(mx.concatenate([weight[a:b] for a, b in ranges]).T)
        part_bias = None
        if bias is not None:
            part_bias = mx.concatenate([bias[a:b] for a, b in ranges])
        parts.append(Linear(block, part_bias, transposed=True))
        offset = 0
        for a, b in ranges:
            pieces.append((a, block[:, offset : offset + b - a]))
            offset += b - a
    mx.eval([(part.weight, part.bias) for part in parts])
    pieces.sort(key=lambda item: item[0])
    if len(pieces) == 1:
        return parts, pieces[0][1].T
    return parts, mx.concatenate([piece.T for _, piece in pieces], axis=0)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent ranges joined: [(0, 4), (4, 8)] -> [(0, 8)]."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _by_inputs(module: Any) -> Linear:
    """A module's weight stored transposed (in, out), contiguous, without its bias: a lane's
    share of the inputs is a range of rows. The stock module reads a transposed view (for a
    Linear no copy; a Conv1d's reshape is lazy)."""
    transposed = mx.contiguous(_matrix(module).T)
    mx.eval(transposed)
    _give_back(module, transposed.T)
    return Linear(transposed, None, transposed=True)


def _rows(linear: Linear, start: int, stop: int) -> Linear:
    """The contribution of inputs start..stop of a transposed Linear: a view of its rows."""
    return Linear(linear.weight[start:stop], None, transposed=True)


def _norm(module: Any) -> Norm:
    return Norm(
        module.weight if "weight" in module else None,
        module.bias if "bias" in module else None,
        float(module.eps),
    )


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
    """One layer's weights for the fast forward, split over `lanes` lanes; the stock
    modules are given the same numbers back (views, or lazily rebuilt: see `_by_outputs`)."""
    attn, conv = layer.self_attn, layer.conv
    d = attn.linear_q.weight.shape[1]
    heads = attn.n_head
    head_dim = d // heads
    hidden = layer.feed_forward1.linear1.weight.shape[0]
    unit_shares = Lanes.shares(hidden, lanes)
    head_shares = Lanes.shares(heads, lanes)
    channel_shares = Lanes.shares(d, lanes)

    ff_in = []
    for ff in (layer.feed_forward1, layer.feed_forward2):
        parts, whole = _by_outputs(
            _matrix(ff.linear1), _bias(ff.linear1), [[share] for share in unit_shares]
        )
        _give_back(ff.linear1, whole)
        ff_in.append(parts)
    ff1_out, ff2_out = (
        _by_inputs(layer.feed_forward1.linear2),
        _by_inputs(layer.feed_forward2.linear2),
    )

    projections = (attn.linear_q, attn.linear_k, attn.linear_v)
    fused = mx.concatenate([p.weight for p in projections], axis=0)
    fused_bias = None
    if "bias" in attn.linear_q:
        fused_bias = mx.concatenate([p.bias for p in projections], axis=0)
    qkv, whole = _by_outputs(
        fused,
        fused_bias,
        [[(k * d + a * head_dim, k * d + b * head_dim) for k in range(3)] for a, b in head_shares],
    )
    for index, part in enumerate(projections):
        part.weight = whole[index * d : (index + 1) * d]
    att_out = _by_inputs(attn.linear_out)

    pw1, whole = _by_outputs(
        _matrix(conv.pointwise_conv1),
        _bias(conv.pointwise_conv1),
        [[(a, b), (d + a, d + b)] for a, b in channel_shares],
    )
    _give_back(conv.pointwise_conv1, whole)
    pw2 = _by_inputs(conv.pointwise_conv2)
    depthwise, depthwise_bias = _folded_depthwise(conv)

    lane_weights = []
    for index in range(lanes):
        units, (h0, h1), (c0, c1) = unit_shares[index], head_shares[index], channel_shares[index]
        lane_weights.append(
            LaneWeights(
                ff1_in=ff_in[0][index],
                ff1_out=_rows(ff1_out, *units),
                qkv=qkv[index],
                att_out=_rows(att_out, h0 * head_dim, h1 * head_dim),
                heads=(h0, h1),
                pos_bias_u=attn.pos_bias_u[h0:h1],
                pos_bias_v=attn.pos_bias_v[h0:h1],
                pw1=pw1[index],
                depthwise=mx.contiguous(depthwise[:, c0:c1]),
                depthwise_bias=mx.contiguous(depthwise_bias[c0:c1]),
                pw2=_rows(pw2, c0, c1),
                channels=(c0, c1),
                ff2_in=ff_in[1][index],
                ff2_out=_rows(ff2_out, *units),
            )
        )
    mx.eval([(lw.depthwise, lw.depthwise_bias) for lw in lane_weights])
    return LayerWeights(
        norm_ff1=_norm(layer.norm_feed_forward1),
        ff1_bias=_bias(layer.feed_forward1.linear2),
        norm_att=_norm(layer.norm_self_att),
        att_bias=_bias(attn.linear_out),
        pos=attn.linear_pos.weight,
        heads=heads,
        norm_conv=_norm(layer.norm_conv),
        pw2_bias=_bias(conv.pointwise_conv2),
        kernel_size=depthwise.shape[0],
        norm_ff2=_norm(layer.norm_feed_forward2),
        ff2_bias=_bias(layer.feed_forward2.linear2),
        norm_out=_norm(layer.norm_out),
        lanes=tuple(lane_weights),
    )


# --- one layer ----------------------------------------------------------------------------------

# One array per lane: its heads of a layer's keys or values, or its channels of the conv input.
# What only one lane reads is never joined.
Groups = tuple[mx.array, ...]


@dataclass
class LayerStep:
    """What one layer computed: its output and what a stream caches for later steps."""

    outputs: tuple[mx.array, ...]  # (B, S, d) per lane: each lane's copy, equal to the bit
    all_keys: Groups  # per lane (B, h, P + S, dh): the past keys it attended to, then its own
    all_values: Groups
    conv_input: Groups  # per lane (B, S, c): the GLU outputs its depthwise conv read (masked)
    steps: int  # S

    @property
    def x(self) -> mx.array:
        """The layer's output (B, S, d)."""
        return self.outputs[0]

    @property
    def keys(self) -> Groups:
        """This call's keys per lane (B, h, S, dh), views."""
        return tuple(k[:, :, k.shape[2] - self.steps :] for k in self.all_keys)

    @property
    def values(self) -> Groups:
        return tuple(v[:, :, v.shape[2] - self.steps :] for v in self.all_values)

    def kept(self, cached: int, committed: int, keep: int) -> tuple[Groups, Groups]:
        """Every row's cache after this call, as views (no copy), for rows that all had
        `cached` past keys (the rest of P is left padding) and commit their first `committed`
        new ones: the last `keep` of those, keys and values per lane (B, h, <= keep, dh)."""
        end = self.all_keys[0].shape[2] - self.steps + committed
        start = max(end - cached - committed, end - keep)
        return (
            tuple(k[:, :, start:end] for k in self.all_keys),
            tuple(v[:, :, start:end] for v in self.all_values),
        )


def project_positions(w: LayerWeights, rows: mx.array) -> mx.array:
    """linear_pos of sinusoid rows (n, d), highest relative position first, as (H, n, dh)."""
    n = rows.shape[0]
    projected = rows @ w.pos.T
    return projected.reshape(n, w.heads, -1).transpose(1, 0, 2)


def split_heads(w: LayerWeights, array: mx.array, axis: int) -> Groups:
    """An array with all heads on `axis` as each lane's heads (views)."""
    index: list[Any] = [slice(None)] * array.ndim
    groups = []
    for lw in w.lanes:
        index[axis] = slice(*lw.heads)
        groups.append(array[tuple(index)])
    return tuple(groups)


def join_heads(groups: Groups, axis: int) -> mx.array:
    """Every lane's heads as one array (a copy where there are several lanes)."""
    return groups[0] if len(groups) == 1 else mx.concatenate(list(groups), axis=axis)


def split_channels(w: LayerWeights, array: mx.array) -> Groups:
    """An array with all channels last as each lane's channels (views)."""
    return tuple(array[..., slice(*lw.channels)] for lw in w.lanes)


def lane_streams(w: LayerWeights, lanes: Lanes | None) -> list[Any]:
    """The stream each of the weights' lanes runs on: the lanes' own, or (None) the
    default stream, which then runs them one after another."""
    if lanes is None:
        return [None] * len(w.lanes)
    if lanes.count != len(w.lanes):
        raise ValueError(f"weights split for {len(w.lanes)} lanes, run with {lanes.count}")
    return list(lanes.streams)


def on_lane(stream: Any) -> Any:
    """A context running MLX operations on a lane's stream (None: the default stream)."""
    return mx.stream(stream) if stream is not None else contextlib.nullcontext()


def layer_step(
    w: LayerWeights,
    x: mx.array | tuple[mx.array, ...],
    positions: mx.array,
    *,
    past_keys: Groups | None = None,
    past_values: Groups | None = None,
    key_mask: mx.array | None = None,
    frame_mask: mx.array | None = None,
    conv_left: Groups | None = None,
    lanes: Lanes | None = None,
) -> LayerStep:
    """One conformer layer over the frames `x` (B, S, d), attending to past keys and itself.

    `x` is one array or each lane's copy of it (`LayerStep.outputs` of the layer before).
    `positions` is the layer's projected relative positions (H, n, dh) from the highest
    relative position this call uses, P + S - 1 (P = past keys), down to -(S - 1): exactly
    n = P + 2S - 1 rows; or those sinusoids unprojected, (n, d), to be projected here.
    Query i sits at position P + i, key j at j, for every item: items whose caches are
    shorter are left-padded and masked out by `key_mask`.

    `past_keys`/`past_values` are per lane (B, h, P, dh); `key_mask` (B, P + S) is an
    additive float mask (0 or -inf) over past and new keys; `frame_mask` (B, S) is 1 for
    real frames and 0 for padding, which the depthwise conv must read as zeros (it reads
    `conv_left`, per lane (B, c, channels), on the left, zeros otherwise). Masks may be
    None where nothing is padded. `lanes` runs each lane's share on its own CPU stream.
    """
    streams = lane_streams(w, lanes)
    xs = x if isinstance(x, tuple) else (x,) * len(streams)
    steps = xs[0].shape[1]
    xs = feed_forward(w, xs, streams)
    xs, keys, values = self_attention(w, xs, positions, streams, past_keys, past_values, key_mask)
    xs, conv_input = convolution(w, xs, streams, frame_mask, conv_left)
    xs = feed_forward(w, xs, streams, second=True)
    outputs = []
    for lane_x, stream in zip(xs, streams, strict=True):
        with on_lane(stream):
            outputs.append(w.norm_out(lane_x))
    return LayerStep(tuple(outputs), keys, values, conv_input, steps)


class Lanes:
    """Parallel CPU streams for one thread, one per share of the weights (`LaneWeights`):
    each lane computes its share of every module (hidden units, heads, channels) and each
    module's output as the sum of the lanes' partial outputs, every lane its own copy.

    At the row counts of short audio and stream blocks (M = 24-72) OpenBLAS gains little
    from a second thread inside one matmul, while two single-threaded halves on two streams
    run side by side; MLX's elementwise ops, single-threaded per stream, are split too.
    Lanes meet once per module, lane to lane: a third thread doing the joins (norms,
    concatenations) between them left both lanes idle ~20% of a step (measured).
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


def _module_output(
    xs: tuple[mx.array, ...],
    inners: list[mx.array],
    outs: list[Linear],
    bias: mx.array | None,
    scale: float,
    streams: list[Any],
) -> tuple[mx.array, ...]:
    """x + scale * (the module's output projection of the lanes' inner activations + bias),
    for every lane. One lane: the addition done by the matmul (BLAS beta = 1). Several:
    each lane multiplies its share, and each adds up all the lanes' partial outputs itself
    (the same operations in the same order, so the copies are equal to the bit)."""
    if len(streams) == 1:
        with on_lane(streams[0]):
            residual = xs[0] if bias is None else xs[0] + scale * bias
            return (mx.addmm(residual, inners[0], outs[0].matrix, alpha=scale),)
    parts = []
    for inner, out, stream in zip(inners, outs, streams, strict=True):
        with on_lane(stream):
            parts.append(inner @ out.matrix)
    reduce = _reducer(len(parts), bias is not None, scale)
    rest = parts if bias is None else [*parts, bias]
    joined = []
    for x, stream in zip(xs, streams, strict=True):
        with on_lane(stream):
            joined.append(reduce(x, *rest))
    return tuple(joined)


@functools.cache
def _reducer(count: int, with_bias: bool, scale: float) -> Any:
    """x + scale * (parts[0] + ... + parts[count - 1] [+ bias]) as one compiled kernel."""

    def reduce(x: mx.array, *rest: mx.array) -> mx.array:
        total = rest[0]
        for part in rest[1:count]:
            total = total + part
        if with_bias:
            total = total + rest[count]
        return x + scale * total if scale != 1.0 else x + total

    return mx.compile(reduce, shapeless=True)


def feed_forward(
    w: LayerWeights, xs: tuple[mx.array, ...], streams: list[Any], *, second: bool = False
) -> tuple[mx.array, ...]:
    """x + 0.5 * FF(norm(x)) (the layer's first feed-forward, or its `second`), each lane
    over its share of the hidden units."""
    norm = w.norm_ff2 if second else w.norm_ff1
    inners, outs = [], []
    for lw, x, stream in zip(w.lanes, xs, streams, strict=True):
        lin_in, lin_out = (lw.ff2_in, lw.ff2_out) if second else (lw.ff1_in, lw.ff1_out)
        with on_lane(stream):
            inners.append(_silu(lin_in(norm(x))))
        outs.append(lin_out)
    bias = w.ff2_bias if second else w.ff1_bias
    return _module_output(xs, inners, outs, bias, 0.5, streams)


def self_attention(
    w: LayerWeights,
    xs: tuple[mx.array, ...],
    positions: mx.array,
    streams: list[Any],
    past_keys: Groups | None = None,
    past_values: Groups | None = None,
    key_mask: mx.array | None = None,
) -> tuple[tuple[mx.array, ...], Groups, Groups]:
    """x + relative-position self-attention of norm(x), each lane over its heads; also the
    keys and values each lane attended to, past then this call's, (B, h, P + S, dh).
    `positions` as for `layer_step`."""
    inners, keys, values = [], [], []
    for index, (lw, x, stream) in enumerate(zip(w.lanes, xs, streams, strict=True)):
        with on_lane(stream):
            out, k, v = _attend(
                w,
                lw,
                w.norm_att(x),
                positions,
                None if past_keys is None else past_keys[index],
                None if past_values is None else past_values[index],
                key_mask,
            )
        inners.append(out)
        keys.append(k)
        values.append(v)
    outs = [lw.att_out for lw in w.lanes]
    return _module_output(xs, inners, outs, w.att_bias, 1.0, streams), tuple(keys), tuple(values)


def _attend(
    w: LayerWeights,
    lw: LaneWeights,
    h: mx.array,
    positions: mx.array,
    past_keys: mx.array | None,
    past_values: mx.array | None,
    key_mask: mx.array | None,
) -> tuple[mx.array, mx.array, mx.array]:
    """One lane's heads of the attention over norm(x) `h` (B, S, d): (out (B, S, h dh),
    keys, values (B, h, P + S, dh))."""
    batch, steps, _ = h.shape
    first, last = lw.heads
    count = last - first
    head_dim = lw.pos_bias_u.shape[-1]
    qkv = lw.qkv(h).reshape(batch, steps, 3, count, head_dim)
    q = qkv[:, :, 0]
    k = qkv[:, :, 1].transpose(0, 2, 1, 3)
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)
    keys = k if past_keys is None else mx.concatenate([past_keys, k], axis=2)
    values = v if past_values is None else mx.concatenate([past_values, v], axis=2)
    if positions.ndim == 2:  # sinusoids (n, d): project this lane's heads
        projection = w.pos[first * head_dim : last * head_dim]
        positions = (positions @ projection.T).reshape(-1, count, head_dim)
        positions = positions.transpose(1, 0, 2)
    else:
        positions = positions[first:last]
    q_u = (q + lw.pos_bias_u).transpose(0, 2, 1, 3)
    q_v = (q + lw.pos_bias_v).transpose(0, 2, 1, 3)
    bd = q_v @ positions.swapaxes(-1, -2)  # (B, h, S, n): by relative position
    by_key = q_u @ keys.swapaxes(-1, -2)  # (B, h, S, P + S)
    by_position = _relative_shift(bd, steps, keys.shape[2])
    masks = () if key_mask is None else (key_mask[:, None, None, :],)
    scores = _scorer(head_dim, bool(masks))(by_key, by_position, *masks)
    weights = mx.softmax(scores, axis=-1, precise=True)
    out = (weights @ values).transpose(0, 2, 1, 3)
    return out.reshape(batch, steps, count * head_dim), keys, values


@functools.cache
def _scorer(head_dim: int, masked: bool) -> Any:
    """(scores by key + scores by relative position (a strided view)) / sqrt(dh) [+ mask]
    as one compiled kernel: separately, the view's copy, the sum, the scaling and the mask
    each took a pass over the scores (a 3-stream step ~10% faster fused, measured)."""
    scale = 1.0 / math.sqrt(head_dim)

    def scores(by_key: mx.array, by_position: mx.array, *mask: mx.array) -> mx.array:
        total = (by_key + by_position) * scale
        return total + mask[0] if masked else total

    return mx.compile(scores, shapeless=True)


def convolution(
    w: LayerWeights,
    xs: tuple[mx.array, ...],
    streams: list[Any],
    frame_mask: mx.array | None = None,
    conv_left: Groups | None = None,
) -> tuple[tuple[mx.array, ...], Groups]:
    """x + the conv module of norm(x), each lane over its channels: pointwise, GLU,
    depthwise (BatchNorm folded in), SiLU, pointwise. Also each lane's GLU outputs
    (masked), which a stream keeps as left context."""
    inners, glus = [], []
    context = w.conv_context
    for index, (lw, x, stream) in enumerate(zip(w.lanes, xs, streams, strict=True)):
        with on_lane(stream):
            batch, steps, _ = x.shape
            ab = lw.pw1(w.norm_conv(x))
            width = ab.shape[-1] // 2
            g = _glu(ab[..., :width], ab[..., width:])
            if frame_mask is not None:
                g = g * frame_mask[..., None]
            zeros = mx.zeros((batch, context, width), g.dtype)
            left = zeros if conv_left is None else conv_left[index]
            padded = mx.concatenate([left, g, zeros], axis=1)
            kernel = lw.depthwise
            y = padded[:, 0:steps] * kernel[0] + lw.depthwise_bias
            for tap in range(1, kernel.shape[0]):
                y = y + padded[:, tap : tap + steps] * kernel[tap]
            inners.append(_silu(y))
        glus.append(g)
    outs = [lw.pw2 for lw in w.lanes]
    return _module_output(xs, inners, outs, w.pw2_bias, 1.0, streams), tuple(glus)


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
        xs: mx.array | tuple[mx.array, ...] = x
        for w in self.layers:
            step = layer_step(w, xs, rows, key_mask=key_mask, frame_mask=frame_mask, lanes=lanes)
            xs = step.outputs
        return step.x, out_lengths


def _arrays(tree: Any) -> list[mx.array]:
    """Every array in dataclasses, dicts, lists and tuples of them."""
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    elif hasattr(tree, "__dataclass_fields__"):
        tree = [getattr(tree, name) for name in tree.__dataclass_fields__]
    if isinstance(tree, (list, tuple)):
        return [array for item in tree for array in _arrays(item)]
    return []


# --- a batch of streams -------------------------------------------------------------------------


def batch_masks(
    cached: list[int], steps: list[int], dtype: Any
) -> tuple[mx.array | None, mx.array | None]:
    """(key_mask (B, P + S) additive, frame_mask (B, S)) for streams with `cached` keys each
    (left-padded to P = max) and `steps` new frames each (right-padded to S = max); (None,
    None) where nothing is padded. Every layer of a step has the same cache lengths, so one
    pair serves all of them."""
    past, most = max(cached), max(steps)
    if min(cached) == past and min(steps) == most:
        return None, None
    valid = mx.stack(
        [
            mx.concatenate([mx.arange(past) >= past - have, mx.arange(most) < count])
            for have, count in zip(cached, steps, strict=True)
        ]
    )
    key_mask = mx.where(valid, 0.0, -mx.inf).astype(dtype)
    return key_mask, valid[:, past:].astype(dtype)


def stack_past(
    keys: list[Groups | None], values: list[Groups | None], streams: list[Any] | None = None
) -> tuple[Groups | None, Groups | None]:
    """Per-stream caches (per lane (h, P_b, dh)) as one batch, per lane (B, h, P, dh),
    left-padded with zeros to P = max P_b (None, None while no stream has any); each lane's
    stacked on its own stream of `streams`."""
    ref = next((k for k in keys if k is not None), None)
    if ref is None:
        return None, None
    past = max(0 if k is None else k[0].shape[1] for k in keys)
    lanes = streams if streams is not None else [None] * len(ref)

    def padded(cache: Groups | None, lane: int) -> mx.array:
        heads, _, head_dim = ref[lane].shape
        have = 0 if cache is None else cache[lane].shape[1]
        if have == past:
            assert cache is not None
            return cache[lane]
        gap = mx.zeros((heads, past - have, head_dim), ref[lane].dtype)
        return gap if cache is None else mx.concatenate([gap, cache[lane]], axis=1)

    def stacked(caches: list[Groups | None], lane: int) -> mx.array:
        rows = [padded(cache, lane) for cache in caches]
        return rows[0][None] if len(rows) == 1 else mx.stack(rows)  # one stream: a view

    stacked_keys, stacked_values = [], []
    for lane, stream in enumerate(lanes):
        with on_lane(stream):
            stacked_keys.append(stacked(keys, lane))
            stacked_values.append(stacked(values, lane))
    return tuple(stacked_keys), tuple(stacked_values)


def conv_zeros(w: LayerWeights, batch: int, dtype: Any = mx.float32) -> Groups:
    """A first step's conv context: zeros, per lane (B, c, channels)."""
    context = w.conv_context
    return tuple(
        mx.zeros((batch, context, b - a), dtype) for a, b in (lw.channels for lw in w.lanes)
    )


def kept_conv(
    w: LayerWeights,
    left: Groups,
    conv_input: Groups,
    row: int,
    count: int,
    streams: list[Any],
) -> Groups:
    """Row `row`'s conv context after a step that read `left` and committed its first `count`
    frames of `conv_input`: the last c frames of both, per lane (1, c, channels), each
    lane's on its own stream of `streams`."""
    context = w.conv_context
    kept = []
    for lane, (lane_left, glu) in enumerate(zip(left, conv_input, strict=True)):
        with on_lane(streams[lane]):
            joined = mx.concatenate([lane_left[row : row + 1], glu[row : row + 1, :count]], axis=1)
            kept.append(joined[:, -context:])
    return tuple(kept)


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
    "Groups",
    "LaneWeights",
    "Lanes",
    "LayerStep",
    "LayerWeights",
    "batch_masks",
    "conv_zeros",
    "enabled",
    "fast_encoder_of",
    "install",
    "join_heads",
    "kept_conv",
    "lane_count",
    "lane_streams",
    "layer_step",
    "layer_weights",
    "on_lane",
    "project_positions",
    "set_blas_threads",
    "split_channels",
    "split_heads",
    "stack_past",
    "uninstall",
]
