"""The encoder alone, parakeet-mlx's forward against engine/fast_encoder.py, in one process.

    python bench/encoder.py [--size full|tiny] [--repeats 3] [--profile]

Cases: 2 s of audio at batch 1, 2, 4 and 8, and 12 s at batch 1 (mel of random noise; speed
does not depend on the values). For each case the stock and fast forwards run alternately,
after one warm-up each, and the minimum of --repeats is reported: timings on a shared machine
vary by +-20% from run to run, so compare the ratios, which are measured side by side.

--profile times each part of the encoder separately (an evaluation barrier after each part,
so parts add up to a little more than the whole): subsampling, and per layer the two
feed-forwards, self-attention and the conv module, for both forwards.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

from common import checkpoint

from parakeet_server.engine.blas import use_fast_blas

HOP_SECONDS = 0.01


def _frames(seconds: float) -> int:
    return int(round(seconds / HOP_SECONDS)) + 1


def _time(fn: Callable[[], Any]) -> float:
    import mlx.core as mx

    started = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - started


def run_cases(model: Any, fast: Any, repeats: int) -> None:
    import mlx.core as mx

    features = model.preprocessor_config.features
    cases = [(2.0, batch) for batch in (1, 2, 4, 8)] + [(12.0, 1)]
    print(f"{'audio':>6} {'batch':>5} {'stock s':>8} {'fast s':>8} {'ratio':>6} "
          f"{'stock/item':>10} {'fast/item':>9} {'max diff':>9}")
    for seconds, batch in cases:
        mel = mx.random.normal((batch, _frames(seconds), features), key=mx.random.key(0))
        stock_out = model.encoder(mel)[0]
        fast_out = fast(mel)[0]
        diff = float(mx.max(mx.abs(stock_out - fast_out)))
        best = {"stock": float("inf"), "fast": float("inf")}
        for _ in range(repeats):
            best["stock"] = min(best["stock"], _time(lambda: model.encoder(mel)[0]))
            best["fast"] = min(best["fast"], _time(lambda: fast(mel)[0]))
        print(
            f"{seconds:>5.0f}s {batch:>5} {best['stock']:>8.3f} {best['fast']:>8.3f} "
            f"{best['stock'] / best['fast']:>5.2f}x {best['stock'] / batch:>10.3f} "
            f"{best['fast'] / batch:>9.3f} {diff:>9.1e}",
            flush=True,
        )


def profile(model: Any, fast: Any, seconds: float, batch: int, repeats: int) -> None:
    """Per-part times (ms): subsampling once, the rest summed over layers and averaged."""
    import mlx.core as mx

    from parakeet_server.engine import fast_encoder as fe

    encoder = model.encoder
    mel = mx.random.normal((batch, _frames(seconds), model.preprocessor_config.features))
    lengths = mx.full((batch,), mel.shape[1], dtype=mx.int32)
    parts = ("subsampling", "feed-forward 1", "attention", "conv module", "feed-forward 2")
    totals: dict[str, dict[str, float]] = {"stock": {}, "fast": {}}

    def timed(path: str, part: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out = fn()
        mx.eval(out)
        seconds_taken = time.perf_counter() - started
        totals[path][part] = totals[path].get(part, 0.0) + seconds_taken
        return out

    def stock_pass() -> None:
        x, _ = timed("stock", "subsampling", lambda: encoder.pre_encode(mel, lengths))
        x, pos_emb = encoder.pos_enc(x)
        for layer in encoder.layers:
            x = timed(
                "stock",
                "feed-forward 1",
                lambda: x + 0.5 * layer.feed_forward1(layer.norm_feed_forward1(x)),
            )

            def attention(x: mx.array = x, layer: Any = layer) -> mx.array:
                h = layer.norm_self_att(x)
                return x + layer.self_attn(h, h, h, pos_emb=pos_emb)

            x = timed("stock", "attention", attention)
            x = timed("stock", "conv module", lambda: x + layer.conv(layer.norm_conv(x)))
            x = timed(
                "stock",
                "feed-forward 2",
                lambda: layer.norm_out(
                    x + 0.5 * layer.feed_forward2(layer.norm_feed_forward2(x))
                ),
            )

    def fast_pass() -> None:
        x, _, _ = timed("fast", "subsampling", lambda: fast.subsampling(mel, None))
        rows = fast.positions(x.shape[1], x.dtype)
        for w in fast.layers:
            x = timed("fast", "feed-forward 1", lambda: fe.feed_forward(w.norm_ff1, w.ff1_in, w.ff1_out, x))
            x = timed(
                "fast",
                "attention",
                lambda: fe.self_attention(w, x, fe.project_positions(w, rows))[0],
            )
            x = timed("fast", "conv module", lambda: fe.convolution(w, x)[0])
            x = timed(
                "fast",
                "feed-forward 2",
                lambda: w.norm_out(fe.feed_forward(w.norm_ff2, w.ff2_in, w.ff2_out, x)),
            )

    best: dict[str, dict[str, float]] = {"stock": {}, "fast": {}}
    whole: dict[str, float] = {"stock": float("inf"), "fast": float("inf")}
    for index in range(repeats + 1):  # the first pass warms up
        for path, one_pass in (("stock", stock_pass), ("fast", fast_pass)):
            totals[path] = {}
            one_pass()
            if index:
                for part, value in totals[path].items():
                    best[path][part] = min(best[path].get(part, float("inf")), value)
        if index:
            whole["stock"] = min(whole["stock"], _time(lambda: model.encoder(mel)[0]))
            whole["fast"] = min(whole["fast"], _time(lambda: fast(mel)[0]))
    layers = len(encoder.layers)
    print(f"\nprofile: {seconds:g} s of audio, batch {batch}, {layers} layers "
          f"(ms; layer parts per layer, min of {repeats})")
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
    parser.add_argument("--profile", action="store_true", help="also time each part")
    parser.add_argument("--profile-seconds", type=float, nargs="+", default=[2.0, 12.0])
    args = parser.parse_args()

    blas = use_fast_blas()
    import mlx.core as mx
    from parakeet_mlx.utils import from_pretrained

    from parakeet_server.engine.fast_encoder import FastEncoder

    path = args.checkpoint or str(checkpoint(args.size))
    model = from_pretrained(path, dtype=mx.float32)
    mx.eval(model.parameters())
    fast = FastEncoder(model.encoder)
    print(f"encoder bench: {path}, {len(model.encoder.layers)} layers, "
          f"d_model {model.encoder_config.d_model}, mlx {mx.__version__}, BLAS {blas.name}, "
          f"{platform.machine()}, min of {args.repeats}")
    run_cases(model, fast, args.repeats)
    if args.profile:
        for seconds in args.profile_seconds:
            profile(model, fast, seconds, 1, args.repeats)
    mx.clear_streams()  # before the interpreter exits (ml-explore/mlx#4327)


if __name__ == "__main__":
    main()
