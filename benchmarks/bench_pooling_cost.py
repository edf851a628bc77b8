"""Cost of each pooling type and of MHFA as a share of the SSL encoder's forward pass.

    python benchmarks/bench_pooling_cost.py                # tiny and base configs
    python benchmarks/bench_pooling_cost.py --only tiny    # or base
    python benchmarks/bench_pooling_cost.py --repeats 5

Baseline: the SSL encoder's forward time (CNN + transformer, wav2vec2 with random weights) on
a batch of 4 x 3 s at 16 kHz, CPU, inference (eval, no grad). Each pooling runs on that
encoder's output frames (MHFA on its L+1 hidden states). ``first+cls`` is timed as the read
of position 0; its real cost is one extra position in the transformer (1/T of the sequence).
Configs: ``tiny`` (32 hidden, 2 layers, the tests' config) and ``base`` (wav2vec2-base /
WavLM-base sizes: 768 hidden, 12 layers, 7 CNN layers of 512). Fastest of ``--repeats``
runs for the encoder, of ``10 x --repeats`` round-robin runs for the poolings (the minimum is
the run least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sv_kedro.models.mhfa import MHFA
from sv_kedro.models.pooling import POOLING_NAMES, build_pooling
from sv_kedro.models.ssl_encoder import SSLEncoder

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32],
    "conv_kernel": [10, 3],
    "conv_stride": [5, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
BASE: dict = {}  # transformers' defaults are the wav2vec2-base sizes
CONFIGS = {"tiny": TINY, "base": BASE}


def best_ms(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` runs per function, run round-robin so that load from other
    processes hits every candidate alike (the minimum is the least load-disturbed run)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()  # warm-up
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: min(values) for name, values in times.items()}


def run(name: str, repeats: int) -> None:
    torch.manual_seed(0)
    encoder = SSLEncoder({"kind": "wav2vec2", "config_overrides": CONFIGS[name]}).eval()
    waves = torch.randn(4, 48_000)
    lengths = torch.tensor([48_000, 44_000, 40_000, 36_000])
    with torch.no_grad():
        encoded = encoder(waves, lengths, output_hidden_states=True)
        dim = encoder.hidden_size
        encoder_ms = best_ms({"encoder": lambda: encoder(waves, lengths)}, repeats)["encoder"]
        poolings = {n: build_pooling(n, dim).eval() for n in POOLING_NAMES}
        calls = {n: (lambda p=p: p(encoded.frames, encoded.mask)) for n, p in poolings.items()}
        mhfa = MHFA(dim, encoder.num_layers + 1).eval()
        calls["MHFA"] = lambda: mhfa(encoded.hidden_states, encoded.mask)
        pooling_runs = best_ms(calls, 10 * repeats)
    print(
        f"\n[{name}] hidden {dim}, {encoder.num_layers} layers, frames "
        f"{tuple(encoded.frames.shape)}; baseline = SSL encoder forward {encoder_ms:.1f} ms"
    )
    print(f"{'pooling':<12} {'ms':>9} {'% of encoder':>13}")
    for pooling_name, ms in pooling_runs.items():
        note = "  (128-d x 64 heads -> 256)" if pooling_name == "MHFA" else ""
        print(f"{pooling_name:<12} {ms:9.3f} {100 * ms / encoder_ms:12.3f}%{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch 4 x 3 s")
    for name in [args.only] if args.only else ["tiny", "base"]:
        run(name, args.repeats)


if __name__ == "__main__":
    main()
