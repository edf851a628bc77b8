"""Session-start checks of ``ssl_pseudo_labeling.dino`` and of the settings that must agree
with it (part of :func:`.settings.check_stage_settings`).

DINO reads its settings in its training workers, so ``dino.task.teacher_temperature=0``
stopped the run only once DINO started, and some values trained without an error: a
sample rate the encoder's filterbank does not take (found only when extraction refused the
checkpoint, after DINO), crops too short for the encoder, or a round-1 model other than the
DINO encoder (round 1 then loaded only the tensors whose shapes agree and started the rest
at random). Everything here reads parameters only: no data, no weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sv_kedro.audio.features import frame_lengths
from sv_kedro.models.dino import normalize_dino_config
from sv_kedro.models.factory import ARCHITECTURE_SECTIONS, normalize_model_config
from sv_kedro.pipelines.ssl_pseudo_labeling.nodes import architecture_sections
from sv_kedro.scoring.extraction import ExtractionConfig
from sv_kedro.systems.dino_settings import checked_data_config, checked_task_config
from sv_kedro.training.config import TrainConfig
from sv_kedro.utils.params import as_bool, as_int

NAMESPACE = "ssl_pseudo_labeling"
WHERE = f"{NAMESPACE}.dino"
# What makes an SSL encoder's weights fit another's: the model, not its training knobs
# (dropout, masking, freezing), which DINO and the rounds may well set apart.
ENCODER_IDENTITY = ("kind", "pretrained", "hf_config", "config_overrides")
# Head settings that shape its weights or choose the embedding; the classifier is rebuilt
# for each round's pseudo-labels and dropout holds no weights.
HEAD_IDENTITY = ("hidden_dims", "embedding_layer", "activation", "batch_norm")


def check_dino_settings(section: Mapping[str, Any]) -> dict[str, Any] | None:
    """Refuse, naming ``ssl_pseudo_labeling.dino.<key>``, DINO settings its node or workers
    would refuse, and ones that disagree with the encoder or the extraction; returns the
    checked encoder config (None without a ``dino`` mapping)."""
    dino = section.get("dino")
    if not isinstance(dino, Mapping):
        return None  # absent or not a mapping: check_section names it
    for key in ("model", "training"):
        if dino.get(key) is None:  # the node reads dino["model"] and dino["training"]
            raise ValueError(f"{WHERE}.{key} is required")
    encoder = _wrapped(lambda: dino_encoder(dino["model"]))
    _wrapped(lambda: checked_task_config(dino.get("task") or {}, f"{WHERE}.task"))
    _wrapped(lambda: TrainConfig.from_dict(dino["training"]))
    data = _wrapped(lambda: checked_data_config(dino.get("data") or {}, f"{WHERE}.data"))
    _check_sample_rates(encoder, data, section.get("extraction"))
    _check_crops_fit_encoder(encoder, data)
    return encoder


def check_round_one_fits_dino(encoder: Mapping[str, Any], finetune: Mapping[str, Any]) -> None:
    """Round 1 starts from the DINO encoder unless ``finetune.init_from_previous`` is false:
    its ``finetune.model`` must then be that encoder (the classifier aside)."""
    if finetune.get("model") is None:
        return
    starts_from_dino = as_bool(
        finetune.get("init_from_previous", True), f"{NAMESPACE}.finetune.init_from_previous"
    )
    if starts_from_dino:
        check_same_model(
            finetune["model"],
            f"{NAMESPACE}.finetune.model",
            encoder,
            f"{WHERE}.model.encoder",
            "round 1 starts from the DINO encoder (ssl_pseudo_labeling.finetune."
            "init_from_previous: true)",
            "make the two models the same, or set ssl_pseudo_labeling.finetune."
            "init_from_previous=false to start round 1 from the model's own initialisation "
            "(conf/voxceleb does, for WavLM; ssl_pseudo_labeling_external has no DINO "
            "encoder, so there it changes nothing)",
        )


def dino_encoder(model: Any) -> dict[str, Any]:
    """The checked encoder config of ``dino.model``, as the DINO node builds it (sections
    of other architectures, left by an environment's soft merge, dropped)."""
    if not isinstance(model, Mapping):
        raise ValueError(f"{WHERE}.model must be a mapping, got {model!r}")
    given = dict(model)
    if isinstance(given.get("encoder"), Mapping):
        given["encoder"] = architecture_sections(given["encoder"])
    return normalize_dino_config(given, f"{WHERE}.model")["encoder"]


def check_same_model(
    model: Mapping[str, Any],
    where: str,
    reference: Mapping[str, Any],
    reference_where: str,
    reason: str,
    fix: str,
) -> None:
    """Refuse ``model`` whose weights do not fit ``reference``'s: another architecture, or
    other sizes, features or encoder. ``reason`` says why they must fit, ``fix`` what to do;
    loading weights across them would load only the tensors whose shapes agree."""
    mine = _flat(_weight_layout(model, where))
    theirs = _flat(_weight_layout(reference, reference_where))
    differences = [
        f"{key}: {mine.get(key)!r} vs {theirs.get(key)!r}"
        for key in sorted(set(mine) | set(theirs))
        if mine.get(key) != theirs.get(key)
    ]
    if differences:
        shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
        raise ValueError(
            f"{where} differs from {reference_where} ({shown}), but {reason}: only the "
            f"weights whose shapes agree would be loaded, the rest would start at random; "
            f"{fix}"
        )


def _weight_layout(model: Mapping[str, Any], where: str) -> dict[str, Any]:
    config = normalize_model_config(architecture_sections(model), where)
    layout: dict[str, Any] = {"architecture": config["architecture"]}
    for name in ARCHITECTURE_SECTIONS[config["architecture"]]:
        value = config[name]
        if name == "encoder":
            value = {key: value[key] for key in ENCODER_IDENTITY}
        elif name == "head":
            value = {key: value[key] for key in HEAD_IDENTITY}
        layout[name] = value
    return layout


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_sample_rates(
    encoder: Mapping[str, Any], data: Mapping[str, Any], extraction: Any
) -> None:
    """The crops' and the extraction's audio rate must be the filterbank's: crops at another
    rate train DINO on speech at the wrong pitch and speed without an error, and the
    extraction refuses the checkpoint only after DINO has trained."""
    if "fbank" not in encoder:
        return  # SSL encoders: the transformers model takes the rate it was built for
    rate = int(encoder["fbank"]["sample_rate"])
    if data["sample_rate"] != rate:
        raise ValueError(
            f"{WHERE}.data.sample_rate={data['sample_rate']} is not the "
            f"{rate} Hz the encoder's filterbank takes ({WHERE}.model.encoder.fbank."
            "sample_rate); set both to the same rate"
        )
    if isinstance(extraction, Mapping):
        key = f"{NAMESPACE}.extraction.sample_rate"
        extracted = as_int(extraction.get("sample_rate", ExtractionConfig.sample_rate), key)
        if extracted != rate:
            raise ValueError(
                f"{key}={extracted} is not the {rate} Hz the DINO encoder takes "
                f"({WHERE}.model.encoder.fbank.sample_rate): the training set could not be "
                f"embedded with it once DINO has trained; set {key} to {rate}"
            )


def _check_crops_fit_encoder(encoder: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Each crop must give the filterbank encoder the feature frames it needs (one for
    ECAPA-TDNN, more than the TDNN context for the x-vector), or DINO fails at its first
    step with an error about samples or frames that names no setting."""
    if "fbank" not in encoder:
        return  # SSLEncoder names inputs too short for its CNN itself, with the fix
    needed = 1
    if encoder["architecture"] == "xvector":
        xvector = encoder["xvector"]
        kernels, dilations = xvector["kernels"], xvector["dilations"]
        needed = 1 + sum((k - 1) * d for k, d in zip(kernels, dilations, strict=False))
    rate = int(data["sample_rate"])
    crops = {"global_seconds": data["global_seconds"]}
    if data["local_crops"] > 0:
        crops["local_seconds"] = data["local_seconds"]
    for key, seconds in crops.items():
        samples = round(seconds * rate)  # as MultiCropViews cuts them
        frames = int(frame_lengths(torch.tensor([samples]), rate)[0])
        if frames < needed:
            raise ValueError(
                f"{WHERE}.data.{key}={seconds} gives {frames} feature frame(s) of 25 ms "
                f"every 10 ms, fewer than the {needed} the {encoder['architecture']} encoder "
                f"needs; raise {WHERE}.data.{key}"
            )


def _wrapped(check: Callable[[], Any]) -> Any:
    """``check()``, its errors prefixed with ``ssl_pseudo_labeling.dino`` where they do not
    name the full key already (TrainConfig's say ``training.<key>``)."""
    try:
        return check()
    except (ValueError, TypeError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if message.startswith(WHERE):
            raise ValueError(message) from exc
        raise ValueError(f"{WHERE}: {message}") from exc
