"""``build_model(config)``: one entry point for every speaker model, driven by parameters.

Config (a JSON-able dict; unknown keys are errors that name the key)::

    architecture: ssl | ssl_mhfa | ssl_paired | xvector | ecapa_tdnn
    n_classes: 1211            # 0/null: embedding-only (no classifier)
    encoder: {...}             # ssl*: see sv_kedro.models.ssl_encoder.ENCODER_DEFAULTS
    pooling: mean+std          # ssl: a name, or {name: attentive, hidden_dim: 128}
    head: {hidden_dims: [], embedding_layer: pooled, classifier: linear|cosine,
           activation: relu, batch_norm: false, dropout: 0.0}
    mhfa: {compression_dim: 128, n_heads: 64, embedding_dim: 256}         # ssl_mhfa
    paired: {init_std: 0.02, head: cls|segment_cosine}                    # ssl_paired
    fbank: {n_mels: 40|80, sample_rate: 16000, mean_norm: true}          # xvector, ecapa
    xvector: {channels: 512, stats_channels: 1500, kernels: [5,3,3,1,1], dilations: [1,2,3,1,1]}
    ecapa: {channels: 512, embedding_dim: 192, dilations: [2,3,4], scale: 8, ...}

The model keeps the filled-in config as ``model.model_config``;
:func:`checkpoint_model_config` returns a variant that rebuilds offline (the encoder's full
transformers config inline, no pre-trained download) for checkpoints:
``build_model(payload["model_config"])`` then ``load_state_dict(payload["model_state"])``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from sv_kedro.audio.features import LogMelFbank
from sv_kedro.models.ecapa import ECAPATDNN
from sv_kedro.models.heads import ClassificationHead, FrameClassificationHead
from sv_kedro.models.mhfa import MHFA
from sv_kedro.models.paired import PairedSpeakerModel
from sv_kedro.models.pooling import build_pooling
from sv_kedro.models.speaker_model import SpeakerModel
from sv_kedro.models.ssl_encoder import SSLEncoder, check_encoder_config
from sv_kedro.models.tdnn import XVectorTDNN
from sv_kedro.utils.params import as_bool, as_float, as_int

ARCHITECTURES: tuple[str, ...] = ("ssl", "ssl_mhfa", "ssl_paired", "xvector", "ecapa_tdnn")
HEAD_DEFAULTS: dict[str, Any] = {
    "hidden_dims": [],
    "embedding_layer": "pooled",
    "classifier": "linear",
    "activation": "relu",
    "batch_norm": False,
    "dropout": 0.0,
}
# Per-architecture head defaults: the papers' choices.
ARCHITECTURE_HEADS: dict[str, dict[str, Any]] = {
    "ssl": {},
    "ssl_mhfa": {"classifier": "cosine"},
    "xvector": {"hidden_dims": [512, 512], "embedding_layer": 0, "batch_norm": True},
    "ecapa_tdnn": {"classifier": "cosine"},
}
SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "mhfa": {"compression_dim": 128, "n_heads": 64, "embedding_dim": 256},
    "paired": {"init_std": 0.02, "head": "cls"},
    "xvector": {
        "channels": 512,
        "stats_channels": 1500,
        "kernels": [5, 3, 3, 1, 1],
        "dilations": [1, 2, 3, 1, 1],
    },
    "ecapa": {
        "channels": 512,
        "embedding_dim": 192,
        "dilations": [2, 3, 4],
        "kernel": 3,
        "scale": 8,
        "se_bottleneck": 128,
        "mfa_channels": 1536,
        "attention_dim": 128,
        "residual_sum": True,
    },
    "fbank": {"n_mels": 80, "sample_rate": 16000, "mean_norm": True},
}
# Which sections each architecture reads.
ARCHITECTURE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ssl": ("encoder", "pooling", "head"),
    "ssl_mhfa": ("encoder", "mhfa", "head"),
    "ssl_paired": ("encoder", "paired"),
    "xvector": ("fbank", "xvector", "head"),
    "ecapa_tdnn": ("fbank", "ecapa", "head"),
}


def _section(
    config: Mapping[str, Any], name: str, defaults: Mapping[str, Any], where: str
) -> dict[str, Any]:
    given = config.get(name) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}.{name} must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{where}.{name}: unknown key(s) {unknown}; allowed: {sorted(defaults)}")
    section = {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(given))}
    for key, default in defaults.items():
        if key != "embedding_layer":  # "pooled" or a layer index from 0: the head checks it
            section[key] = _like_default(section[key], default, f"{where}.{name}.{key}")
    return section


def _like_default(value: Any, default: Any, key: str) -> Any:
    """``value`` checked against its default's kind: sizes (ints, lists of ints) are whole
    numbers >= 1, switches are booleans, rates are numbers >= 0 (dropout below 1); a wrong
    one raises naming ``key`` here rather than a bare error deep inside a layer."""
    if isinstance(default, bool):
        return as_bool(value, key)
    if isinstance(default, int):
        number = as_int(value, key)
        if number < 1:
            raise ValueError(f"{key} must be >= 1, got {value!r}")
        return number
    if isinstance(default, float):
        rate = as_float(value, key)
        if not (0 <= rate < 1 if key.endswith("dropout") else rate >= 0):
            bounds = "in [0, 1)" if key.endswith("dropout") else ">= 0"
            raise ValueError(f"{key} must be {bounds}, got {value!r}")
        return rate
    if isinstance(default, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list of whole numbers, got {value!r}")
        return [_like_default(item, 1, f"{key}[{i}]") for i, item in enumerate(value)]
    return value


def normalize_model_config(
    config: Mapping[str, Any], where: str = "model_config"
) -> dict[str, Any]:
    """Validate ``config`` and fill in every default; the result is JSON-able."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(config).__name__}")
    architecture = config.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{where}.architecture: {architecture!r} is not one of {ARCHITECTURES}")
    sections = ARCHITECTURE_SECTIONS[architecture]
    allowed = {"architecture", "n_classes", *sections}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: key(s) {unknown} are not used by architecture '{architecture}' "
            f"(allowed: {sorted(allowed)})"
        )
    n_classes = config.get("n_classes")
    # bool is an int: ``n_classes: true`` would build a one-class classifier.
    bad_type = isinstance(n_classes, bool) or not isinstance(n_classes, int)
    if n_classes is not None and (bad_type or n_classes < 0):
        raise ValueError(f"{where}.n_classes must be a non-negative integer, got {n_classes!r}")
    result: dict[str, Any] = {"architecture": architecture, "n_classes": n_classes}
    if "encoder" in sections:
        result["encoder"] = check_encoder_config(config.get("encoder") or {}, f"{where}.encoder")
    if "pooling" in sections:
        pooling = config.get("pooling", "mean+std")
        result["pooling"] = {"name": pooling} if isinstance(pooling, str) else dict(pooling)
        if "name" not in result["pooling"]:
            raise ValueError(f"{where}.pooling: a mapping needs a 'name'")
    if "head" in sections:
        head_defaults = {**HEAD_DEFAULTS, **ARCHITECTURE_HEADS[architecture]}
        result["head"] = _section(config, "head", head_defaults, where)
    for name in ("mhfa", "paired", "xvector", "ecapa"):
        if name in sections:
            result[name] = _section(config, name, SECTION_DEFAULTS[name], where)
    if "fbank" in sections:
        fbank_defaults = dict(SECTION_DEFAULTS["fbank"])
        if architecture == "xvector":
            fbank_defaults["n_mels"] = 40
        result["fbank"] = _section(config, "fbank", fbank_defaults, where)
    try:
        json.dumps(result)
    except TypeError as error:
        raise ValueError(f"{where} is not JSON-serialisable: {error}") from error
    return result


def _head(cfg: Mapping[str, Any], in_dim: int) -> ClassificationHead:
    head = cfg["head"]
    return ClassificationHead(
        in_dim,
        head["hidden_dims"],
        cfg["n_classes"],
        head["embedding_layer"],
        head["classifier"],
        head["activation"],
        bool(head["batch_norm"]),
        float(head["dropout"]),
    )


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build the model described by ``config`` (see the module docstring)."""
    cfg = normalize_model_config(config)
    architecture = cfg["architecture"]
    if architecture == "ssl_paired":
        return PairedSpeakerModel(SSLEncoder(cfg["encoder"]), **cfg["paired"], model_config=cfg)
    if architecture in ("ssl", "ssl_mhfa"):
        encoder = SSLEncoder(cfg["encoder"])
        if architecture == "ssl_mhfa":
            pooling: nn.Module = MHFA(encoder.hidden_size, encoder.num_layers + 1, **cfg["mhfa"])
        else:
            options = {k: v for k, v in cfg["pooling"].items() if k != "name"}
            pooling = build_pooling(cfg["pooling"]["name"], encoder.hidden_size, **options)
        if getattr(pooling, "frame_level", False):
            head_cfg = cfg["head"]
            head: nn.Module = FrameClassificationHead(
                pooling.output_dim,
                int(cfg["n_classes"] or 0),
                head_cfg["hidden_dims"],
                head_cfg["activation"],
                float(head_cfg["dropout"]),
            )
        else:
            head = _head(cfg, pooling.output_dim)
        return SpeakerModel(architecture, encoder, pooling, head, cfg)
    fbank = LogMelFbank(
        int(cfg["fbank"]["n_mels"]),
        int(cfg["fbank"]["sample_rate"]),
        bool(cfg["fbank"]["mean_norm"]),
    )
    if architecture == "xvector":
        xvector = cfg["xvector"]
        backbone: nn.Module = XVectorTDNN(
            fbank.n_mels,
            int(xvector["channels"]),
            int(xvector["stats_channels"]),
            tuple(xvector["kernels"]),
            tuple(xvector["dilations"]),
        )
    else:
        ecapa = dict(cfg["ecapa"])
        ecapa["dilations"] = tuple(ecapa["dilations"])
        backbone = ECAPATDNN(fbank.n_mels, **ecapa)
    return SpeakerModel(architecture, fbank, backbone, _head(cfg, backbone.output_dim), cfg)


def checkpoint_model_config(model: nn.Module) -> dict[str, Any]:
    """``model.model_config`` made to rebuild offline: for SSL models the encoder's full
    transformers config is stored inline and ``pretrained`` cleared (the checkpoint's
    ``model_state`` carries the weights)."""
    config = copy.deepcopy(getattr(model, "model_config", None) or {})
    if not config:
        raise ValueError("checkpoint_model_config: model was not built by build_model")
    frontend = getattr(model, "frontend", None)
    if isinstance(frontend, SSLEncoder):
        config["encoder"]["hf_config"] = frontend.export_hf_config()
        config["encoder"]["pretrained"] = None
        config["encoder"]["reset_weights"] = False
        config["encoder"]["normalize_waveform"] = frontend.normalize_waveform
    json.dumps(config)
    return config
