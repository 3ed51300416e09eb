"""A faster forward of parakeet-mlx's dw_striding subsampling for training on CPU.

MLX's CPU Conv2d (grouped above all) dominated a training step. The same convolutions as nine
strided slices and a matmul use the module's own weights and give the same numbers (checked
by `check()`), so the trained weights load unchanged into the stock module.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn


def _taps(x: mx.array) -> tuple[list[mx.array], int, int]:
    """The nine 3x3 stride-2 taps of NHWC `x` padded by 1, each (B, H', W', C)."""
    _, h, w, _ = x.shape
    out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    taps = [
        padded[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2, :]
        for i in range(3)
        for j in range(3)
    ]
    return taps, out_h, out_w


def _conv(layer: nn.Conv2d, x: mx.array) -> mx.array:
    weight = layer.weight  # (out, kh, kw, in / groups)
    out_channels, kh, _, per_group = weight.shape
    if kh == 1:
        y = x @ weight.reshape(out_channels, per_group).T
    elif per_group == 1 and x.shape[-1] == out_channels and out_channels > 1:  # depthwise
        taps, _, _ = _taps(x)
        kernel = weight.reshape(out_channels, 9)
        y = taps[0] * kernel[:, 0]
        for k in range(1, 9):
            y = y + taps[k] * kernel[:, k]
    else:  # dense 3x3, stride 2
        taps, _, _ = _taps(x)
        patches = mx.concatenate(taps, axis=-1)  # (B, H', W', 9 * in), tap-major
        kernel = weight.reshape(out_channels, 9, per_group).reshape(out_channels, -1)
        y = patches @ kernel.T
    if "bias" in layer:
        y = y + layer.bias
    return y


def conv_forward(self: Any, x: mx.array) -> mx.array:
    x = x.transpose((0, 2, 3, 1))
    for layer in self.conv:
        x = _conv(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
    return x.transpose((0, 3, 1, 2))


def install(model: Any) -> None:
    """Replaces the conv forward of `model.encoder.pre_encode` (this instance only)."""
    pre = model.encoder.pre_encode
    pre.conv_forward = conv_forward.__get__(pre)


def check(model: Any) -> float:
    pre = model.encoder.pre_encode
    x = mx.random.normal((2, 1, 101, 80))
    reference = type(pre).conv_forward(pre, x)
    return float(mx.abs(conv_forward(pre, x) - reference).max())
