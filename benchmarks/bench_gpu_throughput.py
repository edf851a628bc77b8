"""GPU training throughput: ``loop.train`` against a bare forward/backward loop (the baseline).

Model: WavLM-Base+ size (``transformers.WavLMConfig()`` defaults, random init; nothing is
downloaded) with an MHFA-like back-end (learned layer weightings for keys and values,
multi-head attentive pooling, embedding, cosine classifier). Both sides train in bf16
autocast with AdamW on the same random waveforms already on the GPU, so only the training
loop differs. Reported: samples/s of the bare loop (after ``--warmup`` steps) and of
``train()`` (its own per-window ``samples_per_s``, first window dropped as warm-up), and
``train()``'s whole wall time including set-up and its final checkpoint write.

    python benchmarks/bench_gpu_throughput.py --batch-size 32 --seconds 3 --steps 60

Without CUDA it exits with a message (``--allow-cpu --tiny`` runs a small smoke version).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from sv_kedro.training.config import TrainConfig
from sv_kedro.training.loop import train
from sv_kedro.training.task import LoaderRequest, StepOutput, TrainState


class MHFALikeHead(nn.Module):
    """Keys/values from two softmax-weighted sums of the encoder's hidden states, pooled by
    ``heads`` attention heads into one embedding ``[batch, embedding_dim]``."""

    def __init__(
        self,
        layers: int,
        width: int,
        heads: int = 64,
        compressed: int = 128,
        embedding_dim: int = 256,
        classes: int = 1000,
    ):
        super().__init__()
        self.key_weights = nn.Parameter(torch.zeros(layers))
        self.value_weights = nn.Parameter(torch.zeros(layers))
        self.key_proj = nn.Linear(width, compressed)
        self.value_proj = nn.Linear(width, compressed)
        self.attention = nn.Linear(compressed, heads)
        self.embedding = nn.Linear(heads * compressed, embedding_dim)
        self.classifier = nn.Parameter(torch.randn(classes, embedding_dim) * 0.01)

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack(hidden_states, dim=-1)  # [batch, time, width, layers]
        keys = self.key_proj((stacked * self.key_weights.softmax(0)).sum(-1))
        values = self.value_proj((stacked * self.value_weights.softmax(0)).sum(-1))
        attention = self.attention(keys).softmax(dim=1)  # [batch, time, heads]
        pooled = torch.einsum("bth,btc->bhc", attention, values).flatten(1)
        embedding = self.embedding(pooled)
        cosines = (
            nn.functional.normalize(embedding, dim=-1)
            @ nn.functional.normalize(self.classifier, dim=-1).T
        )
        return embedding, cosines


class WavLMMHFA(nn.Module):
    def __init__(self, tiny: bool):
        super().__init__()
        from transformers import WavLMConfig, WavLMModel

        # layerdrop off: a dropped layer also drops its hidden state, which MHFA reads.
        config = WavLMConfig(layerdrop=0.0)
        if tiny:
            config = WavLMConfig(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                conv_dim=(32,) * 7,
                num_conv_pos_embeddings=16,
                layerdrop=0.0,
            )
        self.encoder = WavLMModel(config)
        self.head = MHFALikeHead(config.num_hidden_layers + 1, config.hidden_size)

    def forward(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(waves, output_hidden_states=True).hidden_states
        return self.head(hidden)


class AAMTask:
    """Additive angular margin softmax on the head's cosines (m=0.2, s=30)."""

    def __init__(self, margin: float = 0.2, scale: float = 30.0):
        self.margin, self.scale = margin, scale

    def loss(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosines = cosines.float().clamp(-1 + 1e-6, 1 - 1e-6)
        target = torch.cos(torch.acos(cosines.gather(1, labels[:, None])) + self.margin)
        logits = self.scale * cosines.scatter(1, labels[:, None], target)
        return nn.functional.cross_entropy(logits, labels, reduction="none")

    def compute_loss(self, model: nn.Module, batch, state: TrainState) -> StepOutput:
        waves, labels = batch
        _, cosines = model(waves)
        per_sample = self.loss(cosines, labels)
        correct = (cosines.detach().argmax(-1) == labels).sum()
        return StepOutput(per_sample.mean(), per_sample, correct, int(labels.shape[0]))


class RepeatBatch:
    """Loader factory: the same on-device batch ``steps`` times (no data loading cost)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], steps: int):
        self.batch, self.steps = batch, steps

    def __call__(self, request: LoaderRequest) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.batch] * (self.steps - request.start_batch)


def bare_loop(model: nn.Module, task: AAMTask, batch, steps: int, warmup: int, device) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            _, cosines = model(batch[0])
        loss = task.loss(cosines, batch[1]).mean()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * batch[0].shape[0] / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="crop length (16 kHz)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--allow-cpu", action="store_true", help="smoke run without CUDA")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer WavLM (smoke run)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit(
            "bench_gpu_throughput: CUDA is not available on this machine; run it on a GPU "
            "host (or pass --allow-cpu --tiny for a smoke run)."
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(args.batch_size, int(16000 * args.seconds), generator=generator)
    labels = torch.randint(0, 1000, (args.batch_size,), generator=generator)
    batch = (waves.to(device), labels.to(device))
    task = AAMTask()

    torch.manual_seed(0)
    model = WavLMMHFA(args.tiny).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    bare = bare_loop(model, task, batch, args.steps, args.warmup, device)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    torch.manual_seed(0)
    model = WavLMMHFA(args.tiny)
    config = TrainConfig(
        epochs=1,
        optimizer="adamw",
        lr=5e-5,
        head_lr=5e-3,
        layer_decay=0.9,
        precision="bf16",
        log_every=args.warmup,
        progress_bar=False,
        schedule={
            "kind": "tri_stage",
            "warmup_ratio": 0.1,
            "constant_ratio": 0.4,
            "decay_ratio": 0.5,
        },
    )
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        started = time.perf_counter()
        result = train(
            model, task, RepeatBatch(batch, args.warmup + args.steps), config, checkpoint_dir
        )
        total_s = time.perf_counter() - started
    rows = result.metrics[result.metrics["kind"] == "train"]
    ours = statistics.median(rows["samples_per_s"].iloc[1:]) if len(rows) > 1 else float("nan")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; model: WavLM{' (tiny)' if args.tiny else '-Base+ size'} + MHFA-like "
        f"head, {parameters / 1e6:.1f} M parameters; batch {args.batch_size} x "
        f"{args.seconds:g} s; bf16 autocast; {args.steps} timed steps"
    )
    print(f"bare forward/backward loop (baseline): {bare:8.1f} samples/s")
    print(
        f"sv_kedro train() (per-window median):  {ours:8.1f} samples/s "
        f"({100 * (ours / bare - 1):+.1f}% vs baseline)"
    )
    print(
        f"sv_kedro train() whole call:           {total_s:8.1f} s for "
        f"{args.warmup + args.steps} steps incl. set-up and the final checkpoint"
    )


if __name__ == "__main__":
    main()
