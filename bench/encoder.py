"""The encoder alone, parakeet-mlx's forward against engine/fast_encoder.py, in one process.

    python bench/encoder.py [--size full|tiny] [--repeats 3] [--profile]

Cases: 2 s of audio at batch 1, 2, 4 and 8, and 12 s at batch 1 (mel of random noise; speed
does not depend on the values). Paths, run alternately after one warm-up each, minimum of
--repeats reported:

- stock: parakeet-mlx's forward with OpenBLAS's own threads (2 here), as the server ran it;
- stock/1t: the same with one OpenBLAS thread (what the fast path sets), to show how much of
  the gain is the thread setting alone;
- fast: engine/fast_encoder.py as installed (lanes, one OpenBLAS thread per lane).

Timings on a shared machine vary by +-20% from run to run: compare the ratios, which are
measured side by side. --profile times each part separately (an evaluation barrier after
each, so parts add up to a little more than the whole): subsampling, and per layer the two
feed-forwards, self-attention and the conv module, stock against fast.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from common import checkpoint

from parakeet_server.engine.runtime import use_fast_blas

HOP_SECONDS = 0.01
CASES = [(2.0, 1), (2.0, 2), (2.0, 4), (2.0, 8), (12.0, 1)]


def _frames(seconds: float) -> int:
    return round(seconds / HOP_SECONDS) + 1


def _time(fn: Callable[[], Any]) -> float:
    import mlx.core as mx

    started = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - started


def run_cases(model: Any, fast: Any, repeats: int, threads: int) -> None:
    import mlx.core as mx

    from parakeet_server.engine.fast_encoder import set_blas_threads

    features = model.preprocessor_config.features
    paths: list[tuple[str, Callable[[mx.array], Any], int]] = [
        ("stock", lambda mel: model.encoder(mel)[0], threads),
        ("stock/1t", lambda mel: model.encoder(mel)[0], 1),
        ("fast", lambda mel: fast(mel)[0], 1 if fast.lane_count > 1 else threads),
    ]
    print(
        f"{'audio':>5} {'batch':>5} {'stock s':>8} {'stock/1t':>8} {'fast s':>7} "
        f"{'fast/stock':>10} {'fast/1t':>7} {'fast/item':>9} {'max diff':>8}"
    )
    for seconds, batch in CASES:
        mel = mx.random.normal((batch, _frames(seconds), features), key=mx.random.key(0))
        best: dict[str, float] = {}
        for _, fn, count in paths:  # warm-up
            set_blas_threads(count)
            mx.eval(fn(mel))
        diff = float(mx.max(mx.abs(paths[0][1](mel) - paths[2][1](mel))))
        for _ in range(repeats):
            for name, fn, count in paths:
                set_blas_threads(count)
                started = time.perf_counter()
                mx.eval(fn(mel))
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
        print(
            f"{seconds:>4.0f}s {batch:>5} {best['stock']:>8.3f} {best['stock/1t']:>8.3f} "
            f"{best['fast']:>7.3f} {best['stock'] / best['fast']:>9.2f}x "
            f"{best['stock/1t'] / best['fast']:>6.2f}x {best['fast'] / batch:>9.3f} "
            f"{diff:>8.1e}",
            flush=True,
        )
    set_blas_threads(threads)


def profile(model: Any, fast: Any, seconds: float, batch: int, repeats: int, threads: int) -> None:
    """Per-part times (ms): subsampling once, the layer parts per layer."""
    import mlx.core as mx

    from parakeet_server.engine import fast_encoder as fe

    encoder = model.encoder
    mel = mx.random.normal((batch, _frames(seconds), model.preprocessor_config.features))
    lengths = mx.full((batch,), mel.shape[1], dtype=mx.int32)
    parts = ("subsampling", "feed-forward 1", "attention", "conv module", "feed-forward 2")
    totals: dict[str, float] = {}

    def timed(part: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out = fn()
        mx.eval(out)
        totals[part] = totals.get(part, 0.0) + time.perf_counter() - started
        return out

    def stock_pass() -> None:
        x, _ = timed("subsampling", lambda: encoder.pre_encode(mel, lengths))
        x, pos_emb = encoder.pos_enc(x)
        for layer in encoder.layers:

            def ff1(x: mx.array = x, layer: Any = layer) -> mx.array:
                out: mx.array = x + 0.5 * layer.feed_forward1(layer.norm_feed_forward1(x))
                return out

            x = timed("feed-forward 1", ff1)

            def attention(x: mx.array = x, layer: Any = layer) -> mx.array:
                h = layer.norm_self_att(x)
                out: mx.array = x + layer.self_attn(h, h, h, pos_emb=pos_emb)
                return out

            x = timed("attention", attention)

            def conv(x: mx.array = x, layer: Any = layer) -> mx.array:
                out: mx.array = x + layer.conv(layer.norm_conv(x))
                return out

            x = timed("conv module", conv)

            def ff2(x: mx.array = x, layer: Any = layer) -> mx.array:
                out: mx.array = layer.norm_out(
                    x + 0.5 * layer.feed_forward2(layer.norm_feed_forward2(x))
                )
                return out

            x = timed("feed-forward 2", ff2)

    def fast_pass() -> None:
        lanes = fast.lanes()
        x, _, _ = timed("subsampling", lambda: fast.subsampling(mel, None))
        rows = fast.positions(x.shape[1], x.dtype)
        for w in fast.layers:

            def ff1(x: mx.array = x, w: Any = w) -> mx.array:
                s = fe.lane_streams(w, lanes)
                return fe.feed_forward(w, (x,) * len(s), s)[0]

            x = timed("feed-forward 1", ff1)

            def attention(x: mx.array = x, w: Any = w) -> mx.array:
                s = fe.lane_streams(w, lanes)
                return fe.self_attention(w, (x,) * len(s), rows, s)[0][0]

            x = timed("attention", attention)

            def conv_module(x: mx.array = x, w: Any = w) -> mx.array:
                s = fe.lane_streams(w, lanes)
                return fe.convolution(w, (x,) * len(s), s)[0][0]

            x = timed("conv module", conv_module)

            def ff2(x: mx.array = x, w: Any = w) -> mx.array:
                s = fe.lane_streams(w, lanes)
                out: mx.array = w.norm_out(fe.feed_forward(w, (x,) * len(s), s, second=True)[0])
                return out

            x = timed("feed-forward 2", ff2)

    best: dict[str, dict[str, float]] = {"stock": {}, "fast": {}}
    whole: dict[str, float] = {"stock": float("inf"), "fast": float("inf")}
    passes = {"stock": (stock_pass, threads), "fast": (fast_pass, 1 if fast.lanes() else threads)}
    for index in range(repeats + 1):  # the first pass warms up
        for path, (one_pass, count) in passes.items():
            fe.set_blas_threads(count)
            totals.clear()
            one_pass()
            if index:
                for part, value in totals.items():
                    best[path][part] = min(best[path].get(part, float("inf")), value)
        if index:
            fe.set_blas_threads(threads)
            whole["stock"] = min(whole["stock"], _time(lambda: model.encoder(mel)[0]))
            fe.set_blas_threads(passes["fast"][1])
            whole["fast"] = min(whole["fast"], _time(lambda: fast(mel)[0]))
    fe.set_blas_threads(threads)
    layers = len(encoder.layers)
    print(
        f"\nprofile: {seconds:g} s of audio, batch {batch}, {layers} layers "
        f"(ms: subsampling for the encoder, layer parts per layer; min of {repeats})"
    )
    print(f"{'part':<16} {'stock':>8} {'fast':>8} {'ratio':>6}")
    for part in parts:
        per = 1 if part == "subsampling" else layers
        stock_ms = best["stock"][part] / per * 1000
        fast_ms = best["fast"][part] / per * 1000
        print(f"{part:<16} {stock_ms:>8.2f} {fast_ms:>8.2f} {stock_ms / fast_ms:>5.2f}x")
    for path in ("stock", "fast"):
        parts_sum = sum(best[path].values())
        print(f"{path}: parts sum {parts_sum:.3f} s, whole encoder {whole[path]:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--checkpoint", help="a model directory instead of a random checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lanes", type=int, help="parallel CPU streams (default: as installed)")
    parser.add_argument("--blas-threads", type=int, default=2, help="OpenBLAS threads for stock")
    parser.add_argument("--profile", action="store_true", help="also time each part")
    parser.add_argument("--profile-seconds", type=float, nargs="+", default=[2.0, 12.0])
    args = parser.parse_args()

    blas = use_fast_blas()
    import mlx.core as mx
    from parakeet_mlx.utils import from_pretrained

    from parakeet_server.engine.fast_encoder import FastEncoder, set_blas_threads

    path = args.checkpoint or str(checkpoint(args.size))
    model = from_pretrained(path, dtype=mx.float32)
    mx.eval(model.parameters())
    fast = FastEncoder(model.encoder, lanes=args.lanes)
    if not set_blas_threads(args.blas_threads):
        print("(OpenBLAS not loaded: thread settings have no effect)")
    print(
        f"encoder bench: {path}, {len(model.encoder.layers)} layers, "
        f"d_model {model.encoder_config.d_model}, mlx {metadata.version('mlx')}, BLAS {blas.name}, "
        f"{platform.machine()}, fast lanes {fast.lane_count}, min of {args.repeats}"
    )
    run_cases(model, fast, args.repeats, args.blas_threads)
    if args.profile:
        for seconds in args.profile_seconds:
            profile(model, fast, seconds, 1, args.repeats, args.blas_threads)
    mx.clear_streams()  # before the interpreter exits (ml-explore/mlx#4327)


if __name__ == "__main__":
    main()
