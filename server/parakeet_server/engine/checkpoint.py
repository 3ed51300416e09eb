"""Random-weight Parakeet checkpoints for tests, demos and benchmarks.

They are built with parakeet-mlx's own classes and saved as `config.json` + `model.safetensors`,
so the server loads them through exactly the path it uses for real models.

    python -m parakeet_server.engine.checkpoint OUT_DIR [--size tiny|full] [--kind tdt|rnnt|ctc]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("tdt", "rnnt", "ctc")
SIZES = ("tiny", "full")

_TARGETS = {
    "tdt": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
    "rnnt": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
    "ctc": "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
}
_TDT_DURATIONS = [0, 1, 2, 3, 4]


def _vocabulary(size: int) -> list[str]:
    """A SentencePiece-like vocabulary: word-initial pieces ("▁ab") and continuations ("ab")."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces: list[str] = ["▁" + c for c in letters] + list(letters) + [".", ",", "?", "'"]
    for a in letters:
        for b in letters:
            if len(pieces) >= size:
                return pieces[:size]
            pieces.append(("▁" if (ord(a) + ord(b)) % 3 == 0 else "") + a + b)
    return pieces[:size]


def make_config(kind: str = "tdt", size: str = "tiny") -> dict[str, Any]:
    """The NeMo-style config.json of a Parakeet model of `kind` at `size`.

    "full" matches parakeet-tdt-0.6b-v3 (24 layers, d_model 1024, 8192 tokens);
    "tiny" keeps the same shapes of everything but is ~100x smaller.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    full = size == "full"
    d_model = 1024 if full else 96
    vocab = _vocabulary(8192 if full else 128)
    pred_hidden = 640 if full else 64
    config: dict[str, Any] = {
        "target": _TARGETS[kind],
        "preprocessor": {
            "sample_rate": 16000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": 128 if full else 80,
            "n_fft": 512,
            "dither": 1e-05,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "feat_in": 128 if full else 80,
            "n_layers": 24 if full else 2,
            "d_model": d_model,
            "n_heads": 8 if full else 4,
            "ff_expansion_factor": 4,
            "subsampling_factor": 8,
            "self_attention_model": "rel_pos",
            "subsampling": "dw_striding",
            "conv_kernel_size": 9,
            "subsampling_conv_channels": 256 if full else 32,
            "pos_emb_max_len": 5000,
            "causal_downsampling": False,
            "use_bias": not full,
            "xscaling": False,
            "subsampling_conv_chunking_factor": 1,
        },
    }
    if kind == "ctc":
        config["decoder"] = {
            "feat_in": d_model,
            "num_classes": len(vocab),
            "vocabulary": vocab,
        }
        config["decoding"] = {"greedy": {"max_symbols": 10}}
        return config
    config["model_defaults"] = {"tdt_durations": _TDT_DURATIONS if kind == "tdt" else None}
    config["decoder"] = {
        "blank_as_pad": True,
        "vocab_size": len(vocab),
        "prednet": {"pred_hidden": pred_hidden, "pred_rnn_layers": 2 if full else 1},
    }
    config["joint"] = {
        "num_classes": len(vocab),
        "vocabulary": vocab,
        "jointnet": {
            "joint_hidden": pred_hidden,
            "activation": "relu",
            "encoder_hidden": d_model,
            "pred_hidden": pred_hidden,
        },
        "num_extra_outputs": len(_TDT_DURATIONS) if kind == "tdt" else 0,
    }
    if kind == "tdt":
        config["decoding"] = {
            "model_type": "tdt",
            "durations": _TDT_DURATIONS,
            "greedy": {"max_symbols": 10},
        }
    else:
        config["decoding"] = {"greedy": {"max_symbols": 10}}
    return config


def write_checkpoint(out: Path, *, kind: str = "tdt", size: str = "tiny", seed: int = 0) -> Path:
    """Builds a random model with parakeet-mlx and saves it to `out`; returns `out`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from parakeet_mlx.utils import from_config

    config = make_config(kind, size)
    mx.random.seed(seed)
    model = from_config(config)
    if kind != "ctc" and size == "full":
        _bias_towards_speech_rate(model, config)
    weights = dict(tree_flatten(model.parameters()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return out


def _bias_towards_speech_rate(model: Any, config: dict[str, Any]) -> None:
    """Makes a full-size random joint emit a few tokens per second, like speech.

    Unbiased it emits ~100 tokens/s and the decoder loop would dominate any timing.
    """
    import mlx.core as mx

    num_classes = config["joint"]["num_classes"]
    bias = model.joint.joint_net[-1].bias
    offsets = mx.zeros(bias.shape)
    offsets[num_classes] = 1.25  # blank
    if config["model_defaults"]["tdt_durations"] is not None:
        offsets[num_classes + 1] = -30.0  # duration 0
    model.joint.joint_net[-1].bias = bias + offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write config.json and weights to")
    parser.add_argument("--kind", choices=KINDS, default="tdt")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_checkpoint(args.out, kind=args.kind, size=args.size, seed=args.seed))
    import mlx.core as mx

    mx.clear_streams()  # before the interpreter exits, or it aborts (ml-explore/mlx#4327)


if __name__ == "__main__":
    main()
