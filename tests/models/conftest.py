"""Tiny model configs shared by the model tests (CPU, milliseconds per forward)."""

from __future__ import annotations

import warnings

import pytest
import torch

TINY_SSL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32],
    "conv_kernel": [10, 3],
    "conv_stride": [5, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "feat_extract_norm": "layer",
}
TINY_WAVLM_EXTRA = {"num_buckets": 32, "max_bucket_distance": 64}


def tiny_encoder(kind: str = "wav2vec2", norm: str = "layer", **settings: object) -> dict:
    """A tiny encoder config; ``settings`` are extra SSLEncoder keys."""
    overrides = dict(TINY_SSL, feat_extract_norm=norm)
    if kind == "wavlm":
        overrides.update(TINY_WAVLM_EXTRA)
    return {"kind": kind, "config_overrides": overrides, **settings}


@pytest.fixture(autouse=True)
def _quiet_single_threaded_torch():
    # Tiny tensors: one thread avoids contention on the shared CI box; restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # torch warns that WavLM's float attention bias and bool padding mask differ in type.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
        warnings.filterwarnings("ignore", message=".*key_padding_mask and attn_mask.*")
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def padded_waves() -> tuple[torch.Tensor, torch.Tensor]:
    """Three random waves padded to 2400 samples, lengths 2400, 1700, 900."""
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 2400, generator=generator)
    lengths = torch.tensor([2400, 1700, 900])
    for row, length in enumerate(lengths.tolist()):
        waves[row, length:] = 5.0  # loud junk in the padding: must not matter
    return waves, lengths


@pytest.fixture
def encoder_config():
    """Factory fixture: ``encoder_config(kind, norm, **settings)`` -> tiny encoder config."""
    return tiny_encoder


@pytest.fixture
def fbank_waves() -> tuple[torch.Tensor, torch.Tensor]:
    """Three random waves padded to 0.3 s at 16 kHz (28, 21 and 16 fbank frames)."""
    generator = torch.Generator().manual_seed(4)
    waves = torch.randn(3, 4800, generator=generator) * 0.1
    lengths = torch.tensor([4800, 3600, 2800])
    for row, length in enumerate(lengths.tolist()):
        waves[row, length:] = 5.0
    return waves, lengths
