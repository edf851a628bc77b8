"""ECAPA-TDNN (C=512 and C=1024) forward time against x-vectors of similar parameter count.

    python benchmarks/bench_tdnn_forward.py
    python benchmarks/bench_tdnn_forward.py --repeats 5 --batch 16 --seconds 3

Baseline: an x-vector TDNN (Snyder et al. 2018 layout: contexts 5,3,3,1,1, dilations
1,2,3,1,1, 1500-channel last frame layer, statistics pooling, two 512-d segment layers)
whose frame-layer width is chosen so that its parameter count is closest to the ECAPA
model it is compared with (classifier excluded for both). Inference (eval, no grad) on CPU,
batch 16 x 3 s: the log-mel front end is computed once outside the timing (ECAPA on 80
bins, x-vector on 40) and reported separately. Fastest of ``--repeats`` round-robin runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from sv_kedro.audio.features import LogMelFbank
from sv_kedro.models.ecapa import ECAPATDNN
from sv_kedro.models.heads import ClassificationHead
from sv_kedro.models.tdnn import XVectorTDNN


def count(*modules: nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def best_ms(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` round-robin runs per function (load hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()  # warm-up
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: min(values) for name, values in times.items()}


class XVectorNet(nn.Module):
    """Frame layers + stats pooling + segment layers 6 and 7 (embedding a = layer 6)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.tdnn = XVectorTDNN(40, channels, 1500)
        self.segments = ClassificationHead(3000, [512, 512], None, 0, batch_norm=True)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.segments(self.tdnn(feats, lengths)).embedding


def matching_xvector(target: int) -> tuple[int, XVectorNet]:
    """The x-vector width (multiple of 8) whose parameter count is closest to ``target``."""

    def size(channels: int) -> int:
        with torch.device("meta"):  # counts shapes only: no memory, no initialisation
            return count(XVectorNet(channels))

    best = min(range(64, 4096, 8), key=lambda c: abs(size(c) - target))
    return best, XVectorNet(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = int(args.seconds * 16_000)
    waves = torch.randn(args.batch, samples) * 0.1
    lengths = torch.full((args.batch,), samples)
    fbank80, fbank40 = LogMelFbank(80), LogMelFbank(40)
    with torch.no_grad():
        feats80, frames = fbank80(waves, lengths)
        feats40, _ = fbank40(waves, lengths)
        fbank_ms = best_ms({"fbank": lambda: fbank80(waves, lengths)}, args.repeats)["fbank"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch {args.batch}"
        f" x {args.seconds:g} s ({int(frames[0])} frames); 80-bin fbank {fbank_ms:.1f} ms"
    )
    default = XVectorNet(512)
    print(f"(reference: the paper-size x-vector, 512 channels, has {count(default) / 1e6:.2f}M)")
    header = f"{'model':<24} {'params':>8} {'ms':>9} {'ratio vs x-vector':>18}"
    for channels in (512, 1024):
        ecapa = ECAPATDNN(80, channels).eval()
        params = count(ecapa)
        width, xvector = matching_xvector(params)
        xvector.eval()
        with torch.no_grad():
            runs = best_ms(
                {
                    "ecapa": lambda m=ecapa: m(feats80, frames),
                    "xvector": lambda m=xvector: m(feats40, frames),
                },
                args.repeats,
            )
        ecapa_ms, xvector_ms = runs["ecapa"], runs["xvector"]
        print(f"\n{header}")
        print(
            f"{f'x-vector (width {width})':<24} {count(xvector) / 1e6:7.2f}M {xvector_ms:9.1f}"
            f" {1.0:17.2f}x"
        )
        print(
            f"{f'ECAPA-TDNN C={channels}':<24} {params / 1e6:7.2f}M {ecapa_ms:9.1f}"
            f" {ecapa_ms / xvector_ms:17.2f}x"
        )


if __name__ == "__main__":
    main()
