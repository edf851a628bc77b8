"""A small Python API for use outside Kedro: load a model, embed audio, score two files.

from sv_kedro.api import load_speaker_model, embed_file, score_files

model = load_speaker_model("data/06_models/ecapa_tdnn/checkpoint.pt")
vector = embed_file(model, "a.wav")                  # [E] float32, full + crops fused
score = score_files(model, "a.wav", "b.flac")        # cosine, higher = same speaker
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.models.factory import build_model
from sv_kedro.scoring.extraction import embed_crops
from sv_kedro.training.checkpoint import load_checkpoint


def model_from_checkpoint(payload: Mapping[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint payload describes, with its weights, in eval mode."""
    model = build_model(payload["model_config"])
    missing, unexpected = model.load_state_dict(payload["model_state"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not fit the {payload['architecture']} model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def load_speaker_model(path: str | os.PathLike[str], device: str = "cpu") -> nn.Module:
    """Load a checkpoint file (weights-only unpickling) and rebuild its model."""
    return model_from_checkpoint(load_checkpoint(path)).to(device)


def embed_waveform(
    model: nn.Module,
    waveform: np.ndarray,
    n_crops: int = 5,
    crop_seconds: float = 4.0,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Embedding of a 16 kHz mono waveform ``[time]``: the full-utterance and mean-crop
    vectors, each L2-normalised, averaged (the same fusion the evaluation pipeline uses).
    Returns ``[E]`` float32."""
    inputs = evaluation_inputs(
        np.asarray(waveform, dtype=np.float32), n_crops, crop_seconds, max_seconds
    )
    device = next(model.parameters()).device
    full = model.embed(torch.from_numpy(inputs.full)[None].to(device))
    vectors = [torch.nn.functional.normalize(full.float(), dim=-1)[0]]
    if n_crops:
        crops = torch.from_numpy(inputs.crops)[None]
        offsets = torch.from_numpy(inputs.offsets)[None]
        vectors.append(embed_crops(model, crops, offsets, device)[0])
    return torch.stack(vectors).mean(0).cpu().numpy()


def embed_file(model: nn.Module, path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Embedding of an audio file (wav, flac, m4a; resampled to 16 kHz and downmixed)."""
    full = evaluation_inputs(path, n_crops=0).full
    return embed_waveform(model, full, **kwargs)


def score_files(
    model: nn.Module, path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], **kwargs: Any
) -> float:
    """Cosine similarity of two files' embeddings."""
    a = embed_file(model, path_a, **kwargs)
    b = embed_file(model, path_b, **kwargs)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
