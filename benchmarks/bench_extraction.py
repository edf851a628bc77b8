"""Embedding extraction: length-bucketed batches against one input at a time.

    python benchmarks/bench_extraction.py [--utterances 48] [--configs tiny base]
    python benchmarks/bench_extraction.py --seconds 0.5 1.5 --utterances 200   # keyword clips
    python benchmarks/bench_extraction.py --crops 5      # full + 5 x 4 s crops (the default)
    python benchmarks/bench_extraction.py --device cuda  # where a GPU is present
    python benchmarks/bench_extraction.py --repeats 3    # medians of 3 turns per side
    python benchmarks/bench_extraction.py --device cuda --no-tf32  # fp32 convolutions on the GPU
    python benchmarks/bench_extraction.py --roofline     # the most batching could gain here

``--roofline`` counts the forwards' floating-point operations (``FlopCounterMode``), divides
them by each side's time, and measures a dense fp32 matrix product on the same device in the
same run: the fastest this machine does arithmetic. A model whose loop already runs near
that rate is compute-bound, and the ratio bounds what any batching can gain on it. A model
far below it (the tiny one, with 64-channel layers) is bound by memory traffic and per-call
overhead instead; batches save only the overhead.

Both sides embed the same utterances (2-8 s by default) with the same model. Ours is
``extract_embeddings``: length buckets with padding masks, each distinct crop embedded once.
The baseline is the loop most recipes use: read an utterance, one forward for it and one
per crop (``--crops``, 0 by default: full utterances only). ``tiny`` is a 2-layer
wav2vec2-style encoder with mean+std pooling, ``base`` the wav2vec2-base size (768 x 12
layers, random weights) and ``ecapa`` an ECAPA-TDNN (C=512).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.audio.io import write_audio
from sv_kedro.models.factory import build_model
from sv_kedro.scoring.extraction import ExtractionConfig, extract_embeddings

TINY_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "conv_dim": [64, 64, 64],
    "conv_kernel": [10, 3, 3],
    "conv_stride": [5, 4, 4],
    "feat_extract_norm": "layer",
}
CONFIGS = {
    "tiny": {
        "architecture": "ssl",
        "n_classes": 0,
        "encoder": {"kind": "wav2vec2", "config_overrides": TINY_ENCODER},
        "pooling": "mean+std",
    },
    "base": {
        "architecture": "ssl",
        "n_classes": 0,
        "encoder": {"kind": "wav2vec2", "config_overrides": {"feat_extract_norm": "layer"}},
        "pooling": "mean+std",
    },
    "ecapa": {"architecture": "ecapa_tdnn", "n_classes": 0},
}


def make_corpus(
    folder: Path, count: int, min_seconds: float, max_seconds: float, seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        seconds = float(rng.uniform(min_seconds, max_seconds))
        path = folder / f"spk{i % 8}" / f"utt{i:04d}.wav"
        wave = 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32)
        write_audio(path, wave, 16000)
        rows.append(
            {"utt_id": f"spk{i % 8}/utt{i:04d}.wav", "path": str(path), "duration": seconds}
        )
    return pd.DataFrame(rows)


def ours(model, manifest, config) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = extract_embeddings(model, manifest, config, progress=False)
    vectors = result.full.vectors
    if result.crops is not None:
        vectors = np.concatenate([vectors, result.crops.vectors], axis=1)
    return time.perf_counter() - start, vectors


def recipe_loop(model, manifest, config) -> tuple[float, np.ndarray]:
    """One utterance at a time, one forward per input (the full utterance, then each crop)."""
    device = torch.device(config.device)
    start = time.perf_counter()
    rows = []
    with torch.inference_mode():
        for path in manifest["path"]:
            inputs = evaluation_inputs(
                path, config.n_crops, config.crop_seconds, config.max_seconds
            )
            full = torch.from_numpy(inputs.full)[None].to(device)
            row = [model.embed(full)[0].float().cpu()]
            if config.n_crops:
                crops = [model.embed(torch.from_numpy(c)[None].to(device))[0] for c in inputs.crops]
                normed = torch.nn.functional.normalize(torch.stack(crops).float(), dim=-1)
                row.append(normed.mean(0).cpu())
            rows.append(torch.cat(row).numpy())
    return time.perf_counter() - start, np.stack(rows)


def dense_matmul_gflops(device: str, size: int = 2048, repeats: int = 10) -> float:
    """Best rate of an fp32 ``[size, size] @ [size, size]`` product on ``device``, GFLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    rates = []
    for _ in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return max(rates[2:])


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def loop_gflop(model, manifest, config) -> float:
    """Floating-point operations (GFLOP) of the one-by-one loop's forwards over ``manifest``.

    Counted on a copy with weight parametrizations folded in (wav2vec2's weight-normed
    positional convolution fails under the counter otherwise); the arithmetic is the same.
    """
    counted = copy.deepcopy(model)
    for module in [m for m in counted.modules() if parametrize.is_parametrized(m)]:
        for tensor_name in list(module.parametrizations):
            parametrize.remove_parametrizations(module, tensor_name)
    with FlopCounterMode(display=False) as counter:
        recipe_loop(counted, manifest, config)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--configs", nargs="+", default=["tiny", "ecapa", "base"])
    parser.add_argument(
        "--max-batch-seconds", type=float, default=None, help="default: by device (16 s CPU)"
    )
    parser.add_argument("--crops", type=int, default=0, help="crops per utterance (4 s each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="turns per side (medians)")
    parser.add_argument(
        "--no-tf32",
        action="store_true",
        help="fp32 cuDNN convolutions and matmuls (PyTorch's default convolutions use TF32)",
    )
    parser.add_argument(
        "--seconds", type=float, nargs=2, default=(2.0, 8.0), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--roofline", action="store_true", help="GFLOP/s of both sides and of a dense matmul"
    )
    args = parser.parse_args()
    low, high = args.seconds
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(
        f"torch threads: {torch.get_num_threads()}, device {args.device}, "
        f"{args.utterances} utterances of {low}-{high} s, {args.crops} crops, "
        f"TF32 convolutions {torch.backends.cudnn.allow_tf32}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_corpus(Path(tmp), args.utterances, low, high)
        audio_seconds = manifest["duration"].sum()
        for name in args.configs:
            torch.manual_seed(0)
            model = build_model(CONFIGS[name]).eval()
            config = ExtractionConfig(
                n_crops=args.crops, max_batch_seconds=args.max_batch_seconds, device=args.device
            )
            model = model.to(args.device)
            recipe_loop(model, manifest.head(2), config)  # warm-up
            ours(model, manifest.head(2), config)
            batched_times, single_times = [], []
            for _ in range(args.repeats):  # taking turns: both sides see the same machine load
                batched_s, batched = ours(model, manifest, config)
                single_s, single = recipe_loop(model, manifest, config)
                batched_times.append(batched_s)
                single_times.append(single_s)
            batched_s, single_s = np.median(batched_times), np.median(single_times)
            diff = float(np.abs(batched - single).max())
            relative = diff / float(np.abs(single).max())
            print(
                f"[{name}] batched {batched_s:6.2f} s ({audio_seconds / batched_s:6.1f} audio-s/s)"
                f" | one-by-one {single_s:6.2f} s ({audio_seconds / single_s:6.1f} audio-s/s)"
                f" | speed-up x{single_s / batched_s:.2f}"
                f" | max |diff| {diff:.1e} ({relative:.1e} of max |x|)"
                + (f" | medians of {args.repeats} turns each" if args.repeats > 1 else "")
            )
            if args.roofline:
                gflop = loop_gflop(model, manifest, config)
                peak = dense_matmul_gflops(args.device)
                print(
                    f"[{name}] roofline: {gflop:.1f} GFLOP in the loop's forwards"
                    f" | one-by-one {gflop / single_s:.1f} GFLOP/s"
                    f" | batched {gflop / batched_s:.1f} GFLOP/s of the loop's work"
                    f" | dense fp32 matmul {peak:.1f} GFLOP/s"
                    f" | the loop runs at {100 * gflop / single_s / peak:.0f}% of that rate"
                    f" (x{peak * single_s / gflop:.2f} left if compute-bound)"
                )


if __name__ == "__main__":
    main()
