"""Log-mel features the way parakeet-mlx computes them, frame by frame for a growing signal.

`StreamingFeatures` computes every STFT frame exactly once, as the whole-signal STFT would;
`log_mel` is the whole-signal front end built on it; `RunningNormaliser` gives a stream the
per-feature statistics of the frames up to each window's end.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np


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
