"""Building an SSL encoder's transformers model from its settings, with errors that say what
is wrong and where: the setting (``encoder.pretrained``, ``encoder.config_overrides.<key>``)
and the file or folder, instead of a traceback from deep inside transformers.

``pretrained`` is one of: a ``save_pretrained`` folder, a torch checkpoint file (fairseq /
UniLM, any existing file or a ``.pt``/``.pth``/``.ckpt`` name), or a hub id (``name`` or
``org/name``) that must already be in the local cache when offline.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from transformers import (
    PretrainedConfig,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from sv_kedro.training.checkpoint_diagnosis import zip_member_damage

ENCODER_KINDS: dict[str, tuple[type[PretrainedConfig], type[nn.Module]]] = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "wavlm": (WavLMConfig, WavLMModel),
}
# Encoder config keys copied onto the transformers config when not None.
HF_TRAINING_KEYS: tuple[str, ...] = (
    "layerdrop",
    "attention_dropout",
    "hidden_dropout",
    "feat_proj_dropout",
    "activation_dropout",
    "mask_time_prob",
    "mask_time_length",
    "mask_feature_prob",
    "mask_feature_length",
)
TORCH_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt")
# config.json ``model_type`` -> the kind whose classes load it. Other speech encoders
# (hubert, data2vec-audio, unispeech-sat, ...) name their weights differently, so loading
# them here would leave the encoder (partly) random.
MODEL_TYPE_KINDS: dict[str, str] = {"wav2vec2": "wav2vec2", "wavlm": "wavlm"}
WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
# Only used with SpecAugment; a folder saved without it leaves it at its random init.
OPTIONAL_WEIGHTS: frozenset[str] = frozenset({"masked_spec_embed"})
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
# Set on the config by transformers itself; overriding them is never meant.
_NOT_OVERRIDABLE = frozenset({"model_type", "transformers_version", "_name_or_path"})


class PretrainedNotFoundError(ValueError, FileNotFoundError):
    """``pretrained`` names no folder, file or hub id (both a bad value and a missing file)."""


# ------------------------------------------------------------------------ settings
def check_pretrained(value: Any, where: str = "encoder") -> str | None:
    """``value`` as a path or hub id string, refused when it cannot name either."""
    key = f"{where}.pretrained"
    if value is None:
        return None
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"{key} must be a folder, a torch checkpoint file or a hub id (a string), got {value!r}"
        )
    path = Path(text)
    if path.is_dir() or path.is_file():
        return text
    if path.suffix.lower() in TORCH_SUFFIXES:
        raise PretrainedNotFoundError(f"{key}: checkpoint file {text} does not exist")
    if _HUB_ID.fullmatch(text) is None:
        hint = " ('~' is not expanded; write the full path)" if text.startswith("~") else ""
        raise PretrainedNotFoundError(
            f"{key}: {text!r} is not an existing folder, not an existing "
            f"{'/'.join(TORCH_SUFFIXES)} file, and not a hub id ('name' or 'org/name'){hint}"
        )
    return text


@functools.cache
def known_config_keys(config_class: type[PretrainedConfig]) -> frozenset[str]:
    """The settings ``config_class`` has: its constructor's arguments and its fields."""
    parameters = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    return frozenset((parameters | set(config_class().to_dict())) - _NOT_OVERRIDABLE)


def check_config_overrides(kind: str, overrides: Any, where: str = "encoder") -> dict[str, Any]:
    """``overrides`` as a dict, refusing keys the kind's transformers config does not have
    (transformers would store a misspelt key as an unused attribute)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}.config_overrides must be a mapping, got {overrides!r}")
    config_class = ENCODER_KINDS[kind][0]
    known = sorted(known_config_keys(config_class))
    problems = []
    for key in overrides:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"{where}.config_overrides.{key}{hint}")
    if problems:
        raise ValueError(
            f"{'; '.join(problems)}: not a setting of transformers' {config_class.__name__} "
            f"({where}.kind {kind})"
        )
    return dict(overrides)


def apply_settings(
    hf_config: PretrainedConfig, settings: Mapping[str, Any], where: str = "encoder"
) -> None:
    """Set ``config_overrides`` and the dropout/masking keys on ``hf_config`` in place."""
    for key, value in (settings.get("config_overrides") or {}).items():
        # JSON/YAML lists -> the tuples transformers uses
        converted = tuple(value) if isinstance(value, list) else value
        try:
            setattr(hf_config, key, converted)
        except Exception as error:  # transformers' strict field validation, any type
            raise ValueError(
                f"{where}.config_overrides.{key}: {value!r} is refused by transformers' "
                f"{type(hf_config).__name__}: {error}"
            ) from error
    for key in HF_TRAINING_KEYS:
        if settings.get(key) is not None:
            setattr(hf_config, key, settings[key])
    if hasattr(hf_config, "conv_dim"):
        hf_config.num_feat_extract_layers = len(hf_config.conv_dim)


def instantiate(kind: str, hf_config: PretrainedConfig, where: str = "encoder") -> nn.Module:
    """A randomly initialised model of ``kind``; an inconsistent config (e.g. heads that do
    not divide ``hidden_size``) raises naming ``config_overrides``."""
    try:
        return ENCODER_KINDS[kind][1](hf_config)
    except Exception as error:
        raise ValueError(
            f"{where}: cannot build a {kind} model from its config; check "
            f"{where}.config_overrides and {where}.hf_config: {error}"
        ) from error


def is_torch_checkpoint(source: str) -> bool:
    """Whether ``pretrained`` is a torch checkpoint file rather than a folder or hub id."""
    path = Path(source)
    return path.is_file() or (not path.is_dir() and path.suffix.lower() in TORCH_SUFFIXES)


# ------------------------------------------------------------------------ building
def build_encoder_model(
    settings: Mapping[str, Any], where: str = "encoder"
) -> tuple[nn.Module, Any, bool]:
    """``(model, fairseq conversion report or None, checkpoint's normalize flag)`` for checked
    encoder ``settings`` (see ``check_encoder_config``)."""
    kind = settings["kind"]
    pretrained = settings["pretrained"]
    if pretrained is not None and is_torch_checkpoint(pretrained):
        from sv_kedro.models.fairseq_conversion import load_fairseq_model

        model, report = load_fairseq_model(
            pretrained,
            kind,
            settings=settings,
            load_weights=not settings["reset_weights"],
            allow_pickle=settings["allow_pickle"],
            where=where,
        )
        return model, report, report.normalize
    if settings["hf_config"] is not None:
        hf_config = _config_from_dict(kind, settings["hf_config"], where)
    elif pretrained is not None:
        hf_config = pretrained_config(pretrained, kind, where)
    else:
        hf_config = ENCODER_KINDS[kind][0]()
    apply_settings(hf_config, settings, where)
    if pretrained is not None and not settings["reset_weights"]:
        return load_pretrained_weights(pretrained, kind, hf_config, where), None, False
    return instantiate(kind, hf_config, where), None, False


def _config_from_dict(kind: str, values: Mapping[str, Any], where: str) -> PretrainedConfig:
    try:
        return ENCODER_KINDS[kind][0].from_dict(dict(values))
    except Exception as error:
        raise ValueError(f"{where}.hf_config: not a valid {kind} config: {error}") from error


def pretrained_config(source: str, kind: str, where: str = "encoder") -> PretrainedConfig:
    """The transformers config of folder or hub id ``source``, checked against ``kind``."""
    config_class = ENCODER_KINDS[kind][0]
    if Path(source).is_dir():
        config_file = Path(source) / "config.json"
        _check_model_type(_read_config_json(config_file, where), kind, str(config_file), where)
    else:
        values = _hub_call(lambda: config_class.get_config_dict(source)[0], source, where)
        _check_model_type(values, kind, f"hub model {source}", where)
    try:
        return config_class.from_pretrained(source)
    except Exception as error:
        raise ValueError(
            f"{where}.pretrained: the config of {source} is not a valid {kind} config: {error}"
        ) from error


def _read_config_json(config_file: Path, where: str) -> dict[str, Any]:
    key = f"{where}.pretrained"
    if not config_file.is_file():
        raise ValueError(
            f"{key}: folder {config_file.parent} has no config.json, so it is not a "
            "save_pretrained folder"
        )
    try:
        values = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{key}: {config_file} is not readable JSON ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{key}: {config_file} holds {type(values).__name__}, not a mapping")
    return values


def _check_model_type(values: Mapping[str, Any], kind: str, source: str, where: str) -> None:
    model_type = values.get("model_type")
    if model_type is None or MODEL_TYPE_KINDS.get(model_type) == kind:
        return  # a config without model_type cannot be checked
    expected = MODEL_TYPE_KINDS.get(model_type)
    fix = (
        f"set {where}.kind: {expected}"
        if expected
        else f"encoders of that type cannot be loaded here (supported: {sorted(MODEL_TYPE_KINDS)})"
    )
    raise ValueError(f"{where}.kind is {kind} but {source} says model_type {model_type}; {fix}")


def _hub_call(call: Any, hub_id: str, where: str) -> Any:
    """``call()``, whose hub or cache failure is reported naming the id and the key."""
    try:
        return call()
    except (OSError, ValueError) as error:  # transformers raises both for hub failures
        raise ValueError(
            f"{where}.pretrained: {hub_id!r} is not a local folder or file, and as a hub id it "
            "is not in the local cache and the hub cannot be reached (or has no such model): "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
        ) from error


def load_pretrained_weights(
    source: str, kind: str, hf_config: PretrainedConfig, where: str = "encoder"
) -> nn.Module:
    """``from_pretrained`` from folder or hub id ``source``; refuses a damaged weights file
    and weights the folder lacks (transformers would leave them random)."""
    model_class = ENCODER_KINDS[kind][1]
    folder = Path(source) if Path(source).is_dir() else None
    if folder is not None and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(
            f"{where}.pretrained: {folder} has a config.json but no "
            f"{' / '.join(WEIGHT_FILES[:2])}; set {where}.reset_weights: true for random weights"
        )
    try:
        model, info = model_class.from_pretrained(
            source, config=hf_config, output_loading_info=True
        )
    except Exception as error:
        raise ValueError(_weights_failure(source, folder, where, error)) from error
    missing = sorted(set(info.get("missing_keys") or ()) - OPTIONAL_WEIGHTS)
    mismatched = sorted(str(item) for item in info.get("mismatched_keys") or ())
    if missing or mismatched:
        raise ValueError(
            f"{where}.pretrained: the weights in {source} do not fit the {kind} model built "
            f"from its config (check {where}.config_overrides): missing {missing[:8]}, "
            f"shape mismatches {mismatched[:8]}"
        )
    return model


def _weights_failure(source: str, folder: Path | None, where: str, error: Exception) -> str:
    if folder is None:
        return _hub_failure_message(source, where, error)
    for name in WEIGHT_FILES[:2]:
        damage = weights_file_damage(folder / name)
        if damage:
            return f"{where}.pretrained: {folder / name} is corrupt or truncated ({damage})"
    return f"{where}.pretrained: loading the weights from {folder} failed: {error}"


def _hub_failure_message(source: str, where: str, error: Exception) -> str:
    if isinstance(error, OSError):
        return (
            f"{where}.pretrained: the weights of hub model {source!r} are not in the local "
            f"cache and the hub cannot be reached: {error}"
        )
    return f"{where}.pretrained: loading the weights of hub model {source!r} failed: {error}"


def weights_file_damage(path: Path) -> str | None:
    """Why a ``model.safetensors`` / ``pytorch_model.bin`` is unreadable; ``None`` when it
    is absent or its structure reads back fine."""
    if not path.is_file():
        return None
    if path.stat().st_size == 0:
        return "the file is empty"
    if path.suffix == ".safetensors":
        return _safetensors_damage(path)
    # A legacy (non-zip) torch file is not judged: its own load error stands.
    return zip_member_damage(path)


def _safetensors_damage(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        # Opening checks the header and that it covers the whole file.
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as error:  # SafetensorError is not exported under a stable name
        return str(error)
    return None
