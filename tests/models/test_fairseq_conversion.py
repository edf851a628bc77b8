from __future__ import annotations

import argparse

import pytest
import torch

from sv_kedro.models.fairseq_conversion import (
    convert_state_dict,
    hf_to_fairseq_state_dict,
    parse_conv_feature_layers,
)
from sv_kedro.models.ssl_encoder import SSLEncoder

SKIPPED = {
    "label_embs_concat": torch.zeros(4, 8),
    "final_proj.weight": torch.zeros(8, 32),
    "quantizer.vars": torch.zeros(1, 4, 8),
    "project_q.weight": torch.zeros(8, 8),
}


def _fairseq_model_cfg(kind: str, norm: str) -> dict:
    cfg = {
        "extractor_mode": "default" if norm == "group" else "layer_norm",
        "encoder_layers": 2,
        "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 2,
        "activation_fn": "gelu",
        "layer_norm_first": False,
        "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 1",
        "conv_bias": False,
        "conv_pos": 16,
        "conv_pos_groups": 2,
        "mask_prob": 0.65,
    }
    if kind == "wavlm":
        cfg.update(num_buckets=32, max_distance=64, relative_position_embedding=True)
    return cfg


@pytest.mark.parametrize(
    ("kind", "norm", "layout"),
    [("wavlm", "group", "unilm"), ("wav2vec2", "layer", "fairseq"), ("wav2vec2", "group", "args")],
)
def test_fairseq_checkpoint_converts_to_identical_model(
    kind, norm, layout, encoder_config, padded_waves, tmp_path
) -> None:
    original = SSLEncoder(encoder_config(kind, norm, mask_time_prob=0.65)).eval()
    state = hf_to_fairseq_state_dict(original.model)
    assert "encoder.pos_conv.0.weight_g" in state and "post_extract_proj.weight" in state
    if kind == "wavlm":
        assert "encoder.layers.0.self_attn.relative_attention_bias.weight" in state
        assert "encoder.layers.1.self_attn.grep_a" in state
    layer_norm_key = "feature_extractor.conv_layers.1.2.1.weight"
    assert (layer_norm_key in state) == (norm == "layer")
    model_cfg = _fairseq_model_cfg(kind, norm)
    if layout == "unilm":
        checkpoint = {"cfg": model_cfg, "model": {**state, **SKIPPED}}
    elif layout == "fairseq":
        checkpoint = {"cfg": {"model": model_cfg, "task": {"normalize": False}}, "model": state}
    else:
        checkpoint = {"args": argparse.Namespace(**model_cfg), "model": {**state, **SKIPPED}}
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)

    converted = SSLEncoder({"kind": kind, "pretrained": str(path)}).eval()
    report = converted.conversion_report
    assert report.unconsumed == [] and report.missing == []
    assert len(report.loaded) == len(state)
    if layout != "fairseq":
        assert sorted(report.skipped) == sorted(SKIPPED)
    waves, lengths = padded_waves
    with torch.no_grad():
        torch.testing.assert_close(
            converted(waves, lengths).frames, original(waves, lengths).frames
        )


def test_conversion_reports_unconsumed_and_missing_keys(encoder_config) -> None:
    model = SSLEncoder(encoder_config("wavlm")).model
    state = hf_to_fairseq_state_dict(model)
    state["encoder.layers.0.some_new_thing.weight"] = torch.zeros(3)
    del state["encoder.layers.1.fc2.weight"]
    with pytest.raises(ValueError) as error:
        convert_state_dict(state, model)
    message = str(error.value)
    assert "encoder.layers.0.some_new_thing.weight" in message
    assert "encoder.layers.1.feed_forward.output_dense.weight" in message
    report = convert_state_dict(state, model, strict=False)
    assert report.unconsumed == ["encoder.layers.0.some_new_thing.weight"]
    assert report.missing == ["encoder.layers.1.feed_forward.output_dense.weight"]


def test_shape_mismatch_is_an_error(encoder_config) -> None:
    model = SSLEncoder(encoder_config("wav2vec2")).model
    state = hf_to_fairseq_state_dict(model)
    state["post_extract_proj.weight"] = torch.zeros(7, 7)
    with pytest.raises(ValueError, match=r"post_extract_proj.weight \(7, 7\)"):
        convert_state_dict(state, model)


def test_parse_conv_feature_layers() -> None:
    layers = parse_conv_feature_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")
    assert layers[0] == (512, 10, 5) and layers[-1] == (512, 2, 2) and len(layers) == 7
    with pytest.raises(ValueError, match="unsupported"):
        parse_conv_feature_layers("__import__('os')")


def test_missing_checkpoint_file_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        SSLEncoder({"kind": "wavlm", "pretrained": str(tmp_path / "nowhere.pt")})
