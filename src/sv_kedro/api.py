"""A small Python API for use outside Kedro: load a model, embed audio, score two files.

from sv_kedro.api import load_speaker_model, embed_file, score_files

model = load_speaker_model("data/06_models/ecapa_tdnn/checkpoint.pt")
vector = embed_file(model, "a.wav")                  # [E] float32, full + crops fused
score = score_files(model, "a.wav", "b.flac")        # cosine, higher = same speaker

Input the pipelines would exclude is refused rather than embedded: NaN or inf samples,
audio shorter than ``ValidationPolicy.min_duration`` or quieter than its
``silence_rms_db`` (the defaults of ``sv_kedro.corpus.validation.ValidationPolicy``).
Errors name the file (or ``waveform`` for an array).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.audio.io import AudioDecodeError
from sv_kedro.corpus.audio_levels import level_db
from sv_kedro.corpus.validation import ValidationPolicy
from sv_kedro.models.factory import build_model
from sv_kedro.scoring.embedding_table import EmbeddingError
from sv_kedro.scoring.extraction import embed_crops
from sv_kedro.training.checkpoint import CheckpointError, load_checkpoint
from sv_kedro.training.distributed import resolve_device

_SHOWN = 5  # examples of offending keys quoted in a message


def model_from_checkpoint(payload: Mapping[str, Any], source: str = "<checkpoint>") -> nn.Module:
    """Rebuild the model a checkpoint payload describes, with its weights, in eval mode.

    Raises ``CheckpointError`` naming ``source`` (the file, when known) and the first
    weights whose names or shapes do not fit the model.
    """
    model = build_model(payload["model_config"])
    architecture = payload.get("architecture")
    expected = model.state_dict()
    state = payload["model_state"]
    # Checked here because load_state_dict's own message names neither the file nor
    # more than the torch class, and stops at the first batch of mismatches.
    mismatched = [
        f"{name}: checkpoint {tuple(value.shape)}, model {tuple(expected[name].shape)}"
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and name in expected
        and tuple(value.shape) != tuple(expected[name].shape)
    ]
    if mismatched:
        raise CheckpointError(
            f"{source}: {len(mismatched)} checkpoint tensor(s) do not fit the shapes of the "
            f"{architecture} model it describes, e.g. {mismatched[:_SHOWN]}"
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(
            f"{source}: checkpoint weights do not load into the {architecture} model ({detail})"
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: checkpoint weights do not fit the {architecture} model: "
            f"missing {missing[:_SHOWN]}, unexpected {unexpected[:_SHOWN]}"
        )
    return model.eval()


def load_speaker_model(path: str | os.PathLike[str], device: str = "cpu") -> nn.Module:
    """Load a checkpoint file (weights-only unpickling) and rebuild its model on ``device``
    (``cpu``, ``cuda`` or ``cuda:N``)."""
    target = resolve_device(device)
    return model_from_checkpoint(load_checkpoint(path), source=os.fspath(path)).to(target)


def embed_waveform(
    model: nn.Module,
    waveform: np.ndarray,
    n_crops: int = 5,
    crop_seconds: float = 4.0,
    max_seconds: float | None = None,
    policy: ValidationPolicy | None = None,
) -> np.ndarray:
    """Embedding of a 16 kHz waveform ``[time]`` (or ``[time, channels]``, averaged to
    mono): the full-utterance and mean-crop vectors, each L2-normalised, averaged (the
    same fusion the evaluation pipeline uses). Returns ``[E]`` float32.

    Raises ``ValueError`` for any other layout, ``AudioDecodeError`` for NaN/inf samples
    or input shorter or quieter than ``policy`` allows (default ``ValidationPolicy()``),
    and ``EmbeddingError`` when the model produces NaN or inf.
    """
    wave = _as_waveform(waveform, "waveform")
    return _embed(model, wave, "waveform", n_crops, crop_seconds, max_seconds, policy)


def embed_file(model: nn.Module, path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Embedding of an audio file (wav, flac, m4a; resampled to 16 kHz and downmixed).

    ``kwargs`` are those of :func:`embed_waveform`; errors name the file.
    """
    full = evaluation_inputs(path, n_crops=0).full
    return _embed(model, full, os.fspath(path), **kwargs)


def score_files(
    model: nn.Module, path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], **kwargs: Any
) -> float:
    """Cosine similarity of two files' embeddings."""
    a = embed_file(model, path_a, **kwargs)
    b = embed_file(model, path_b, **kwargs)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _as_waveform(waveform: Any, where: str) -> np.ndarray:
    """``waveform`` as float32 ``[time]`` or ``[time, channels]``; any other layout raises
    before anything is allocated for it (a ``[1, 1, time]`` array would otherwise be
    taken for ``time`` channels of one frame and wrap-padded to gigabytes)."""
    array = np.asarray(waveform)
    shape = tuple(array.shape)
    hint = ""
    if array.ndim == 2 and shape[1] > shape[0]:
        hint = "; it looks like [channels, time]: pass its transpose"
    elif array.ndim > 2 and sum(n > 1 for n in shape) == 1:
        hint = "; squeeze the size-1 dimensions"
    if hint or array.ndim not in (1, 2):
        raise ValueError(
            f"{where}: expected a 1-D waveform [time] (or [time, channels]), "
            f"got shape {shape}{hint}"
        )
    return array.astype(np.float32, copy=False)


def _embed(
    model: nn.Module,
    wave: np.ndarray,
    where: str,
    n_crops: int = 5,
    crop_seconds: float = 4.0,
    max_seconds: float | None = None,
    policy: ValidationPolicy | None = None,
) -> np.ndarray:
    policy = ValidationPolicy() if policy is None else policy
    device = next(model.parameters()).device
    try:
        inputs = evaluation_inputs(wave, n_crops, crop_seconds, max_seconds)
        _check_usable(inputs.full, inputs.sample_rate, where, policy)
        full = model.embed(torch.from_numpy(inputs.full)[None].to(device))
        vectors = [torch.nn.functional.normalize(full.float(), dim=-1)[0]]
        if n_crops:
            crops = torch.from_numpy(inputs.crops)[None]
            offsets = torch.from_numpy(inputs.offsets)[None]
            vectors.append(embed_crops(model, crops, offsets, device)[0])
    except ValueError as exc:
        if str(exc).startswith(f"{where}: "):
            raise
        # The model's own input checks (e.g. the x-vector's TDNN context) know no file.
        raise ValueError(f"{where}: {exc}") from exc
    vector = torch.stack(vectors).mean(0).cpu().numpy()
    if not np.isfinite(vector).all():
        raise EmbeddingError(_non_finite_output(model, where))
    return vector


def _check_usable(wave: np.ndarray, sample_rate: int, where: str, policy: ValidationPolicy) -> None:
    """Refuse the mono ``wave`` the model would see if the pipelines would exclude it."""
    finite = np.isfinite(wave)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise AudioDecodeError(
            f"{where}: {bad.size} non-finite sample(s) (NaN or inf), "
            f"the first at {bad[0] / sample_rate:.3f} s"
        )
    duration = wave.shape[0] / sample_rate
    if duration < policy.min_duration:
        raise AudioDecodeError(f"{where}: too short ({duration:.3f} s < {policy.min_duration:g} s)")
    # The pipeline measures the raw file over all channels; here the level of what the
    # model is fed (mono, 16 kHz) decides, as a downmix can cancel out.
    level = level_db([wave], where)
    if level < policy.silence_rms_db:
        raise AudioDecodeError(
            f"{where}: silent (RMS {level:.1f} dBFS < {policy.silence_rms_db:g} dBFS)"
        )


def _non_finite_output(model: nn.Module, where: str) -> str:
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    cause = (
        f"its weights hold NaN or inf, e.g. {bad[:_SHOWN]}"
        if bad
        else "its weights are finite; check the input's scale"
    )
    return f"{where}: the model produced NaN or inf in the embedding ({cause})"
