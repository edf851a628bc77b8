"""A small Python API for use outside Kedro: load a model, embed audio, score two files.

from sv_kedro.api import load_speaker_model, embed_file, score_files

model = load_speaker_model("data/06_models/ecapa_tdnn/checkpoint.pt")
vector = embed_file(model, "a.wav")                  # [E] float32, full + crops fused
score = score_files(model, "a.wav", "b.flac")        # cosine, higher = same speaker

Input the pipelines would exclude is refused rather than embedded: NaN or inf samples,
audio shorter than ``ValidationPolicy.min_duration`` or quieter than its
``silence_rms_db`` (the defaults of ``sv_kedro.corpus.validation.ValidationPolicy``),
and so is an all-zero embedding (it has no direction to score). Errors name the file
(or ``waveform`` for an array, ``model`` or ``sample_rate`` for those arguments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.audio.io import AudioDecodeError, resample
from sv_kedro.corpus.audio_levels import level_db
from sv_kedro.corpus.validation import ValidationPolicy
from sv_kedro.models.factory import build_model
from sv_kedro.scoring.embedding_table import EmbeddingError
from sv_kedro.scoring.extraction import embed_crops
from sv_kedro.training.checkpoint import (
    CheckpointError,
    check_architecture_agrees,
    load_checkpoint,
)
from sv_kedro.training.distributed import resolve_device

_SHOWN = 5  # examples of offending keys quoted in a message
MODEL_SAMPLE_RATE = 16000  # what evaluation_inputs, and so every model here, is fed
_MIN_NORM = 1e-12  # below this an embedding has no direction: cosine scores are meaningless
_EMBED_OPTIONS = ("n_crops", "crop_seconds", "max_seconds", "policy")


def model_from_checkpoint(payload: Mapping[str, Any], source: str = "<checkpoint>") -> nn.Module:
    """Rebuild the model a checkpoint payload describes, with its weights, in eval mode.

    Raises ``CheckpointError`` naming ``source`` (the file, when known) and the first
    weights whose names or shapes do not fit the model, or what of ``model_config`` does
    not build one.
    """
    if isinstance(payload, (str, os.PathLike)):
        raise TypeError(
            f"payload: got the path {os.fspath(payload)!r}, not a checkpoint payload; "
            "call load_speaker_model(path) (or load_checkpoint(path) for the payload)"
        )
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{source}: expected a checkpoint dict, got {type(payload).__name__}")
    missing = [key for key in ("model_config", "model_state") if key not in payload]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks key(s) {missing}")
    # An in-memory payload need not have passed load_checkpoint's validation.
    if payload.get("architecture") is not None and isinstance(payload["model_config"], Mapping):
        check_architecture_agrees(payload["architecture"], payload["model_config"], source)
    try:
        model = build_model(payload["model_config"])
    except (ValueError, TypeError, KeyError) as exc:
        # The factory's message names the key but not the file it came from.
        text = str(exc)
        prefix = "" if text.startswith("model_config") else "model_config: "
        raise CheckpointError(f"{source}: {prefix}{text}") from exc
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
    sample_rate: int | None = None,
) -> np.ndarray:
    """Embedding of a waveform ``[time]`` (or ``[time, channels]``, averaged to mono):
    the full-utterance and mean-crop vectors, each L2-normalised, averaged (the same
    fusion the evaluation pipeline uses). Returns ``[E]`` float32.

    Float samples are taken as they are (full scale is 1.0). Integer PCM is scaled to
    [-1, 1) by its type's full scale: signed types are divided by ``2**(bits-1)`` (int16
    by 32768, int32 by 2**31), unsigned ones centred first (uint8: ``(x - 128) / 128``).
    ``sample_rate`` (Hz) is the waveform's rate; ``None`` takes it to be the model's
    16 kHz, and any other rate is resampled to 16 kHz first.

    Raises ``TypeError`` when ``model`` is not a loaded model, ``ValueError`` for any
    other layout, a bool, complex or non-numeric array or a bad ``sample_rate``,
    ``AudioDecodeError`` for NaN/inf samples or input that is empty, shorter or quieter
    than ``policy`` allows (default ``ValidationPolicy()``), and ``EmbeddingError`` when
    the model produces NaN, inf or an all-zero embedding.
    """
    _check_model(model)
    rate = _check_sample_rate(sample_rate)
    wave = _as_waveform(waveform, "waveform")
    if rate != MODEL_SAMPLE_RATE:
        # Before resampling, whose filter would smear one NaN over its neighbours.
        _check_finite(wave, rate, "waveform")
        wave = resample(wave, rate, MODEL_SAMPLE_RATE)
    return _embed(model, wave, "waveform", n_crops, crop_seconds, max_seconds, policy)


def embed_file(model: nn.Module, path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Embedding of an audio file (wav, flac, m4a; resampled to 16 kHz and downmixed).

    ``kwargs`` are those of :func:`embed_waveform` but ``sample_rate`` (a file states
    its own); errors name the file.
    """
    _check_model(model)
    _check_options(kwargs)
    full = evaluation_inputs(path, n_crops=0).full
    return _embed(model, full, os.fspath(path), **kwargs)


def score_files(
    model: nn.Module, path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], **kwargs: Any
) -> float:
    """Cosine similarity of two files' embeddings (``embed_file`` checks the arguments)."""
    a = embed_file(model, path_a, **kwargs)
    b = embed_file(model, path_b, **kwargs)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _check_model(model: Any) -> None:
    """Refuse what is not a speaker model before it fails as an ``AttributeError``."""
    if isinstance(model, nn.Module) and callable(getattr(model, "embed", None)):
        return
    if isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model: got the path {os.fspath(model)!r}, not a model; call "
            f"load_speaker_model({os.fspath(model)!r}) first and pass the model it returns"
        )
    if isinstance(model, Mapping):
        hint = "; for a checkpoint payload call model_from_checkpoint(payload) first"
    elif isinstance(model, nn.Module):
        hint = f"; a {type(model).__name__} has no embed() method"
    else:
        hint = ""
    raise TypeError(
        f"model: expected a speaker model from load_speaker_model, "
        f"got a {type(model).__name__}{hint}"
    )


def _check_options(kwargs: Mapping[str, Any]) -> None:
    if "sample_rate" in kwargs:
        raise TypeError(
            "sample_rate: a file states its own rate (it is resampled to 16 kHz); "
            "the argument is for embed_waveform"
        )
    unknown = sorted(set(kwargs) - set(_EMBED_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; allowed: {list(_EMBED_OPTIONS)}")


def _check_sample_rate(sample_rate: Any) -> int:
    if sample_rate is None:
        return MODEL_SAMPLE_RATE
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ValueError(f"sample_rate: must be a positive int (Hz), got {sample_rate!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate: must be a positive int (Hz), got {sample_rate}")
    return int(sample_rate)


def _as_waveform(waveform: Any, where: str) -> np.ndarray:
    """``waveform`` as float32 ``[time]`` or ``[time, channels]``; any other layout raises
    before anything is allocated for it (a ``[1, 1, time]`` array would otherwise be
    taken for ``time`` channels of one frame and wrap-padded to gigabytes)."""
    try:
        array = np.asarray(waveform)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{where}: not an array of samples ({exc})") from exc
    kind = array.dtype.kind
    if kind == "b":
        raise ValueError(
            f"{where}: a bool array is not audio; pass float samples in [-1, 1] or integer PCM"
        )
    if kind == "c":
        raise ValueError(
            f"{where}: complex samples ({array.dtype}) are not audio; pass the real signal"
        )
    if kind not in "fiu":
        raise ValueError(
            f"{where}: expected numeric samples (float, or integer PCM), got dtype {array.dtype}"
        )
    shape = tuple(array.shape)
    hint = ""
    if array.ndim == 2 and 0 < shape[0] < shape[1]:
        hint = "; it looks like [channels, time]: pass its transpose"
    elif array.ndim > 2 and sum(n > 1 for n in shape) == 1:
        hint = "; squeeze the size-1 dimensions"
    if hint or array.ndim not in (1, 2):
        raise ValueError(
            f"{where}: expected a 1-D waveform [time] (or [time, channels]), "
            f"got shape {shape}{hint}"
        )
    if array.ndim == 2 and shape[1] == 0:
        raise ValueError(f"{where}: shape {shape} has 0 channels, so no samples")
    if shape[0] == 0:
        raise AudioDecodeError(f"{where}: empty: no samples (shape {shape})")
    return _to_float(array)


def _to_float(array: np.ndarray) -> np.ndarray:
    """Float samples as float32; integer PCM scaled by its type's full scale."""
    if array.dtype.kind not in "iu":
        return array.astype(np.float32, copy=False)
    bits = np.iinfo(array.dtype).bits
    # float32 holds every 16-bit value exactly; wider types lose the low bits otherwise.
    work = np.float32 if bits <= 16 else np.float64
    half = work(2.0 ** (bits - 1))
    centred = array.astype(work) - (half if array.dtype.kind == "u" else work(0))
    return (centred / half).astype(np.float32, copy=False)


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
        full = model.embed(torch.from_numpy(inputs.full)[None].to(device)).float()
        # Raw, as normalising maps a zero vector to itself and hides nothing else.
        norms = [float(full.norm())]
        vectors = [torch.nn.functional.normalize(full, dim=-1)[0]]
        if n_crops:
            crops = torch.from_numpy(inputs.crops)[None]
            offsets = torch.from_numpy(inputs.offsets)[None]
            vectors.append(embed_crops(model, crops, offsets, device)[0])
            norms.append(float(vectors[-1].norm()))
    except ValueError as exc:
        if str(exc).startswith(f"{where}: "):
            raise
        # The model's own input checks (e.g. the x-vector's TDNN context) know no file.
        raise ValueError(f"{where}: {exc}") from exc
    vector = torch.stack(vectors).mean(0).cpu().numpy()
    if not np.isfinite(vector).all():
        raise EmbeddingError(_non_finite_output(model, where))
    smallest = min([*norms, float(np.linalg.norm(vector))])
    if not smallest >= _MIN_NORM:
        raise EmbeddingError(
            f"{where}: the model produced an all-zero embedding (norm {smallest:.1e} < "
            f"{_MIN_NORM:g}), which no score can compare; check the model's weights"
        )
    return vector


def _check_usable(wave: np.ndarray, sample_rate: int, where: str, policy: ValidationPolicy) -> None:
    """Refuse the mono ``wave`` the model would see if the pipelines would exclude it."""
    _check_finite(wave, sample_rate, where)
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


def _check_finite(wave: np.ndarray, sample_rate: int, where: str) -> None:
    """Refuse NaN or inf in ``wave`` (``[time]`` or ``[time, channels]``), counted per
    frame, as a downmix turns one bad channel into a bad mono sample."""
    finite = np.isfinite(wave).reshape(wave.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise AudioDecodeError(
            f"{where}: {bad.size} non-finite sample(s) (NaN or inf), "
            f"the first at {bad[0] / sample_rate:.3f} s"
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
