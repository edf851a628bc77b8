"""Original fairseq / UniLM checkpoints (``wav2vec_small.pt``, ``WavLM-Base+.pt``) -> transformers.

A checkpoint is a dict with ``model`` (the state dict) and either ``cfg`` (new fairseq: a dict
with a ``model`` section; UniLM WavLM: a flat dict) or ``args`` (old fairseq: an
``argparse.Namespace``). Fine-tuned fairseq checkpoints keep the encoder under
``w2v_encoder.w2v_model.``; that prefix is stripped.

Key layout (fairseq -> transformers):

- ``feature_extractor.conv_layers.{i}.0.weight|bias`` -> ``...conv_layers.{i}.conv.*``;
  ``.{i}.2.weight|bias`` (group norm, layer 0 of "default" extractors) and ``.{i}.2.1.*``
  (layer norm of "layer_norm" extractors; ``.2.*`` accepted too) -> ``...{i}.layer_norm.*``
- ``layer_norm`` -> ``feature_projection.layer_norm``; ``post_extract_proj`` ->
  ``feature_projection.projection``; ``mask_emb`` -> ``masked_spec_embed``
- ``encoder.pos_conv.0.weight_g|weight_v|bias`` -> ``encoder.pos_conv_embed.conv`` (weight
  norm: ``parametrizations.weight.original0|original1``)
- ``encoder.layers.{i}.self_attn.{k,v,q,out}_proj`` -> ``...attention.{k,v,q,out}_proj``;
  WavLM ``self_attn.grep_linear`` -> ``attention.gru_rel_pos_linear``, ``self_attn.grep_a`` ->
  ``attention.gru_rel_pos_const``, ``self_attn.relative_attention_bias`` ->
  ``attention.rel_attn_embed``; ``self_attn_layer_norm`` -> ``layer_norm``; ``fc1``/``fc2`` ->
  ``feed_forward.intermediate_dense``/``output_dense``; ``final_layer_norm`` -> same
- ``encoder.layer_norm`` -> ``encoder.layer_norm``

Skipped knowingly (pre-training or fine-tuning heads, not part of the encoder):
``label_embs_concat``, ``final_proj``, ``quantizer``, ``project_q``, ``target_glu``,
``w2v_encoder.proj``. Every other key is either loaded or reported as unconsumed; any encoder
weight left without a value is reported as missing and is an error (``masked_spec_embed``
excepted: it only matters for SpecAugment and keeps its random init). Before that, a
checkpoint of the other kind (WavLM weights with ``kind: wav2vec2``, or the reverse) is
refused naming the kind to set (reading the file and that check:
:mod:`sv_kedro.models.fairseq_checkpoint`).
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from sv_kedro.models.encoder_loading import ENCODER_KINDS, apply_settings, instantiate
from sv_kedro.models.fairseq_checkpoint import (
    FINETUNED_PREFIX,
    check_fairseq_kind,
    read_fairseq_checkpoint,
)

SKIPPED_PREFIXES: tuple[str, ...] = (
    "label_embs_concat",
    "final_proj",
    "quantizer",
    "project_q",
    "target_glu",
    "w2v_encoder.proj",
)
OPTIONAL_TARGETS: tuple[str, ...] = ("masked_spec_embed",)

# (fairseq regex, transformers template); "{0}" is the layer index captured by the regex.
_LAYER_RULES: tuple[tuple[str, str], ...] = (
    (r"self_attn\.(k|v|q|out)_proj\.(weight|bias)", "attention.{1}_proj.{2}"),
    (r"self_attn\.grep_linear\.(weight|bias)", "attention.gru_rel_pos_linear.{1}"),
    (r"self_attn\.grep_a", "attention.gru_rel_pos_const"),
    (r"self_attn\.relative_attention_bias\.weight", "attention.rel_attn_embed.weight"),
    (r"self_attn_layer_norm\.(weight|bias)", "layer_norm.{1}"),
    (r"fc1\.(weight|bias)", "feed_forward.intermediate_dense.{1}"),
    (r"fc2\.(weight|bias)", "feed_forward.output_dense.{1}"),
    (r"final_layer_norm\.(weight|bias)", "final_layer_norm.{1}"),
)
_TOP_RULES: dict[str, str] = {
    "post_extract_proj.weight": "feature_projection.projection.weight",
    "post_extract_proj.bias": "feature_projection.projection.bias",
    "layer_norm.weight": "feature_projection.layer_norm.weight",
    "layer_norm.bias": "feature_projection.layer_norm.bias",
    "mask_emb": "masked_spec_embed",
    "encoder.layer_norm.weight": "encoder.layer_norm.weight",
    "encoder.layer_norm.bias": "encoder.layer_norm.bias",
    "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
}


@dataclass
class ConversionReport:
    """What happened to each key: loaded (fairseq -> hf), skipped, unconsumed, missing."""

    loaded: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unconsumed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    normalize: bool = False

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} loaded, {len(self.skipped)} skipped on purpose, "
            f"{len(self.unconsumed)} unconsumed {self.unconsumed[:5]}, "
            f"{len(self.missing)} missing {self.missing[:5]}"
        )


def _pos_conv_targets(hf_keys: set[str]) -> dict[str, str]:
    base = "encoder.pos_conv_embed.conv."
    if base + "parametrizations.weight.original0" in hf_keys:
        return {
            "encoder.pos_conv.0.weight_g": base + "parametrizations.weight.original0",
            "encoder.pos_conv.0.weight_v": base + "parametrizations.weight.original1",
        }
    return {
        "encoder.pos_conv.0.weight_g": base + "weight_g",
        "encoder.pos_conv.0.weight_v": base + "weight_v",
    }


def fairseq_to_hf_key(name: str, hf_keys: set[str]) -> str | None:
    """Target transformers key for fairseq key ``name`` (``None`` when no rule applies)."""
    if name in _TOP_RULES:
        return _TOP_RULES[name]
    pos_conv = _pos_conv_targets(hf_keys)
    if name in pos_conv:
        return pos_conv[name]
    conv = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)", name)
    if conv:
        index, part, kind = conv.groups()
        module = "conv" if part == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{index}.{module}.{kind}"
    layer = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name)
    if layer:
        index, rest = layer.groups()
        for pattern, template in _LAYER_RULES:
            found = re.fullmatch(pattern, rest)
            if found:
                return f"encoder.layers.{index}." + template.format(index, *found.groups())
    return None


def convert_state_dict(
    fairseq_state: Mapping[str, Tensor], model: nn.Module, strict: bool = True
) -> ConversionReport:
    """Copy ``fairseq_state`` into ``model`` (a Wav2Vec2Model/WavLMModel) in place.

    Raises ``ValueError`` when ``strict`` and a key is unconsumed, an encoder weight is
    missing, or a shape differs; the message lists the keys.
    """
    target_state = model.state_dict()
    hf_keys = set(target_state)
    report = ConversionReport()
    new_state: dict[str, Tensor] = {}
    shape_errors: list[str] = []
    for raw_name, value in fairseq_state.items():
        name = raw_name.removeprefix(FINETUNED_PREFIX)
        if raw_name.startswith(SKIPPED_PREFIXES) or name.startswith(SKIPPED_PREFIXES):
            report.skipped.append(raw_name)
            continue
        target = fairseq_to_hf_key(name, hf_keys)
        if target is None or target not in hf_keys:
            if target in OPTIONAL_TARGETS:
                # The model was built without SpecAugment, so it has no mask embedding.
                report.skipped.append(raw_name)
            else:
                report.unconsumed.append(raw_name)
            continue
        if tuple(value.shape) != tuple(target_state[target].shape):
            shape_errors.append(
                f"{raw_name} {tuple(value.shape)} -> {target} {tuple(target_state[target].shape)}"
            )
            continue
        new_state[target] = value.detach().to(target_state[target].dtype)
        report.loaded[raw_name] = target
    report.missing = sorted(hf_keys - set(new_state) - set(OPTIONAL_TARGETS))
    problems = []
    if shape_errors:
        problems.append(f"shape mismatches: {shape_errors}")
    if report.unconsumed:
        problems.append(f"unconsumed checkpoint keys: {report.unconsumed}")
    if report.missing:
        problems.append(f"model weights missing from the checkpoint: {report.missing}")
    if problems and strict:
        raise ValueError("fairseq conversion failed: " + "; ".join(problems))
    model.load_state_dict(new_state, strict=False)
    return report


def hf_to_fairseq_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The inverse mapping: a fairseq-style state dict from a Wav2Vec2Model/WavLMModel."""
    state = model.state_dict()
    hf_keys = set(state)
    layer_norm_cnn = getattr(model.config, "feat_extract_norm", "group") == "layer"
    inverse: dict[str, str] = {}
    for source, target in {**_TOP_RULES, **_pos_conv_targets(hf_keys)}.items():
        inverse[target] = source
    result: dict[str, Tensor] = {}
    for name, value in state.items():
        if name in inverse:
            result[inverse[name]] = value.clone()
            continue
        conv = re.fullmatch(
            r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(\w+)", name
        )
        if conv:
            index, module, kind = conv.groups()
            part = "0" if module == "conv" else ("2.1" if layer_norm_cnn else "2")
            result[f"feature_extractor.conv_layers.{index}.{part}.{kind}"] = value.clone()
            continue
        layer = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name)
        converted = False
        if layer:
            index, rest = layer.groups()
            for pattern, template in _LAYER_RULES:
                # Build the fairseq name whose forward mapping gives this hf name.
                for candidate in _expand(pattern):
                    if template.format(index, *_groups(pattern, candidate)) == rest:
                        result[f"encoder.layers.{index}.{candidate}"] = value.clone()
                        converted = True
                        break
                if converted:
                    break
        if not converted:
            raise ValueError(f"hf_to_fairseq_state_dict: no fairseq name for '{name}'")
    return result


def _expand(pattern: str) -> list[str]:
    """All strings a rule regex of the form ``a\\.(x|y)\\.(weight|bias)`` matches."""
    options: list[str] = [""]
    for piece in re.split(r"(\([^)]*\))", pattern):
        if piece.startswith("("):
            options = [o + alt for o in options for alt in piece[1:-1].split("|")]
        else:
            options = [o + piece.replace("\\.", ".") for o in options]
    return options


def _groups(pattern: str, text: str) -> tuple[str, ...]:
    found = re.fullmatch(pattern, text)
    return found.groups() if found else ()


# --------------------------------------------------------------------------- configs
def parse_conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` (e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``)
    with a tiny safe evaluator (lists, tuples, ints, ``+`` and ``*`` only)."""

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [evaluate(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"conv_feature_layers: unsupported expression in {spec!r}")

    layers = evaluate(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not all(
        isinstance(layer, tuple) and len(layer) == 3 for layer in layers
    ):
        raise ValueError(f"conv_feature_layers: expected a list of (dim, kernel, stride): {spec!r}")
    return [tuple(int(v) for v in layer) for layer in layers]  # type: ignore[misc]


def checkpoint_model_cfg(
    checkpoint: Mapping[str, Any], source: str = "<checkpoint>"
) -> tuple[dict[str, Any], bool]:
    """The model section of a checkpoint's config and the task's ``normalize`` flag;
    ``source`` names the file in errors."""
    if "cfg" in checkpoint and checkpoint["cfg"] is not None:
        cfg = dict(checkpoint["cfg"])
        model_cfg = dict(cfg["model"]) if isinstance(cfg.get("model"), Mapping) else cfg
        task = cfg.get("task") if isinstance(cfg.get("task"), Mapping) else {}
        normalize = bool(task.get("normalize", model_cfg.get("normalize", False)))
    elif "args" in checkpoint and checkpoint["args"] is not None:
        model_cfg = dict(vars(checkpoint["args"]))
        normalize = bool(model_cfg.get("normalize", False))
    else:
        raise ValueError(
            f"{source}: fairseq checkpoint has neither 'cfg' nor 'args'; cannot build a config"
        )
    if "w2v_args" in model_cfg and model_cfg.get("w2v_args") is not None:
        # Fine-tuned checkpoints keep the pre-training config under w2v_args.
        inner = model_cfg["w2v_args"]
        inner = vars(inner) if isinstance(inner, argparse.Namespace) else dict(inner)
        return checkpoint_model_cfg(
            {"cfg": inner} if "model" in inner else {"args": argparse.Namespace(**inner)},
            source,
        )
    return model_cfg, normalize


def hf_config_from_fairseq(kind: str, model_cfg: Mapping[str, Any]):
    """A transformers config equivalent to a fairseq/UniLM model config."""
    config_class, _ = ENCODER_KINDS[kind]
    conv = parse_conv_feature_layers(
        str(
            model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
        )
    )
    values: dict[str, Any] = {
        "hidden_size": int(model_cfg.get("encoder_embed_dim", 768)),
        "num_hidden_layers": int(model_cfg.get("encoder_layers", 12)),
        "num_attention_heads": int(model_cfg.get("encoder_attention_heads", 12)),
        "intermediate_size": int(model_cfg.get("encoder_ffn_embed_dim", 3072)),
        "hidden_act": str(model_cfg.get("activation_fn", "gelu")),
        "feat_extract_norm": "layer"
        if model_cfg.get("extractor_mode") == "layer_norm"
        else "group",
        "feat_extract_activation": "gelu",
        "conv_dim": tuple(layer[0] for layer in conv),
        "conv_kernel": tuple(layer[1] for layer in conv),
        "conv_stride": tuple(layer[2] for layer in conv),
        "num_feat_extract_layers": len(conv),
        "conv_bias": bool(model_cfg.get("conv_bias", False)),
        "num_conv_pos_embeddings": int(model_cfg.get("conv_pos", 128)),
        "num_conv_pos_embedding_groups": int(model_cfg.get("conv_pos_groups", 16)),
        "do_stable_layer_norm": bool(model_cfg.get("layer_norm_first", False)),
        "hidden_dropout": float(model_cfg.get("dropout", 0.1)),
        "attention_dropout": float(model_cfg.get("attention_dropout", 0.1)),
        "activation_dropout": float(model_cfg.get("activation_dropout", 0.0)),
        "feat_proj_dropout": float(model_cfg.get("dropout_input", 0.0)),
        "layerdrop": float(model_cfg.get("encoder_layerdrop", 0.0)),
        "mask_time_prob": float(model_cfg.get("mask_prob", 0.05)),
        "mask_time_length": int(model_cfg.get("mask_length", 10)),
        "mask_feature_prob": float(model_cfg.get("mask_channel_prob", 0.0)),
        "mask_feature_length": int(model_cfg.get("mask_channel_length", 10)),
        "layer_norm_eps": 1e-5,
    }
    if kind == "wavlm":
        values["num_buckets"] = int(model_cfg.get("num_buckets", 320))
        values["max_bucket_distance"] = int(model_cfg.get("max_distance", 800))
    return config_class(**values)


def load_fairseq_model(
    path: str,
    kind: str,
    settings: Mapping[str, Any] | None = None,
    load_weights: bool = True,
    allow_pickle: bool = False,
    where: str = "encoder",
) -> tuple[nn.Module, ConversionReport]:
    """Build a transformers model from a fairseq/UniLM checkpoint at ``path``.

    ``settings``: encoder settings (``config_overrides`` and dropout/masking keys) applied on
    top of the checkpoint's config. ``load_weights=False`` keeps random weights (ablation).
    ``where`` prefixes the setting names in errors.
    """
    checkpoint = read_fairseq_checkpoint(path, allow_pickle, where)
    if load_weights:
        # Random weights of either kind can take the checkpoint's sizes; only loading
        # its weights needs the kind to match.
        check_fairseq_kind(checkpoint["model"], kind, str(path), where)
    try:
        model_cfg, normalize = checkpoint_model_cfg(checkpoint, str(path))
        hf_config = hf_config_from_fairseq(kind, model_cfg)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{where}.pretrained: {path}: {error}") from error
    apply_settings(hf_config, settings or {}, where)
    model = instantiate(kind, hf_config, where)
    if load_weights:
        try:
            report = convert_state_dict(checkpoint["model"], model)
        except ValueError as error:
            raise ValueError(f"{where}.pretrained: {path}: {error}") from error
    else:
        report = ConversionReport()
    report.normalize = normalize
    return model, report
