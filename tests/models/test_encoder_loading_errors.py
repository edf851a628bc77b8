"""Bad encoder settings and damaged pretrained files give errors naming the key and the file."""

from __future__ import annotations

import argparse
import pathlib
import re

import huggingface_hub.constants
import pytest
import torch
from transformers import HubertConfig, HubertModel

from sv_kedro.models.factory import build_model
from sv_kedro.models.fairseq_conversion import hf_to_fairseq_state_dict
from sv_kedro.models.ssl_encoder import SSLEncoder

KEY = "model_config.encoder"  # build_model's prefix for the encoder section
TINY_FAIRSEQ_CFG = {
    "extractor_mode": "layer_norm",
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 1",
    "conv_pos": 16,
    "conv_pos_groups": 2,
}


def _build(encoder: dict) -> torch.nn.Module:
    return build_model({"architecture": "ssl", "n_classes": 0, "encoder": encoder})


def _error(encoder: dict) -> str:
    with pytest.raises(ValueError) as caught:
        _build(encoder)
    return str(caught.value)


@pytest.fixture
def saved(encoder_config, tmp_path):
    """``saved(kind)`` -> a save_pretrained folder of a tiny random encoder of ``kind``."""

    def save(kind: str) -> pathlib.Path:
        folder = tmp_path / kind
        SSLEncoder(encoder_config(kind)).model.save_pretrained(folder)
        return folder

    return save


# ---------------------------------------------------------------------------- 1. pretrained
def test_missing_pretrained_folder_names_key_and_value(tmp_path) -> None:
    missing = tmp_path / "nope"
    message = _error({"pretrained": str(missing)})
    assert f"{KEY}.pretrained" in message and str(missing) in message
    assert "not an existing folder" in message and "not a hub id" in message


def test_pretrained_of_the_wrong_type_is_refused() -> None:
    message = _error({"pretrained": 5})
    assert f"{KEY}.pretrained" in message and "got 5" in message


def test_uncached_hub_id_offline_says_so(monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_id = "sv-kedro-tests/no-such-model"
    with pytest.raises(ValueError) as caught:
        SSLEncoder({"pretrained": hub_id})
    message = str(caught.value)
    assert "encoder.pretrained" in message and hub_id in message
    assert "not in the local cache" in message and "cannot be reached" in message
    assert isinstance(caught.value.__cause__, OSError)


# ---------------------------------------------------------------------------- 2. model_type
@pytest.mark.parametrize(("saved_kind", "kind"), [("wavlm", "wav2vec2"), ("wav2vec2", "wavlm")])
def test_kind_must_match_the_folder_model_type(saved, saved_kind, kind) -> None:
    folder = saved(saved_kind)
    with pytest.raises(ValueError) as caught:
        SSLEncoder({"kind": kind, "pretrained": str(folder)})
    assert str(caught.value) == (
        f"encoder.kind is {kind} but {folder / 'config.json'} says model_type {saved_kind}; "
        f"set encoder.kind: {saved_kind}"
    )


def test_unsupported_model_type_is_refused(encoder_config, tmp_path) -> None:
    overrides = encoder_config("wav2vec2")["config_overrides"]
    HubertModel(HubertConfig(**overrides)).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as caught:
        SSLEncoder({"pretrained": str(tmp_path)})
    message = str(caught.value)
    assert "encoder.kind is wav2vec2" in message and str(tmp_path / "config.json") in message
    assert "model_type hubert" in message and "cannot be loaded" in message


# ---------------------------------------------------------------------------- 3. switches
@pytest.mark.parametrize(
    "key",
    [
        "reset_weights",
        "allow_pickle",
        "completely_freeze_feature_extractor",
        "gradient_checkpointing",
        "output_hidden_states",
        "normalize_waveform",
    ],
)
@pytest.mark.parametrize("value", ["false", "no", "maybe", 1])
def test_switches_must_be_booleans(encoder_config, key, value) -> None:
    message = _error(encoder_config("wav2vec2", **{key: value}))
    assert message == f"{KEY}.{key} must be true or false, got {value!r}"


# ---------------------------------------------------------------------------- 4. numbers
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("freeze_encoder_steps", "abc", "must be an integer, got 'abc'"),
        ("freeze_encoder_steps", 2.5, "must be an integer, got 2.5"),
        ("freeze_encoder_steps", -1, "must be >= 0, got -1"),
        ("layerdrop", "high", "must be a number, got 'high'"),
        ("mask_time_prob", 1.5, "must be in [0, 1], got 1.5"),
        ("hidden_dropout", True, "must be a number, got True"),
        ("mask_time_length", 0, "must be >= 1, got 0"),
        ("mask_feature_length", "x", "must be an integer, got 'x'"),
    ],
)
def test_numeric_settings_are_checked(encoder_config, key, value, expected) -> None:
    message = _error(encoder_config("wav2vec2", **{key: value}))
    assert message == f"{KEY}.{key} {expected}"


def test_numeric_strings_are_converted(encoder_config) -> None:
    model = _build(encoder_config("wav2vec2", freeze_encoder_steps="3", layerdrop="0.0"))
    assert model.frontend.freeze_encoder_steps == 3
    assert model.frontend.model.config.layerdrop == 0.0


# ---------------------------------------------------------------------------- 5. overrides
def test_misspelt_config_override_is_refused_with_a_suggestion(encoder_config) -> None:
    config = encoder_config("wav2vec2")
    config["config_overrides"]["num_hidden_layer"] = 3
    message = _error(config)
    assert f"{KEY}.config_overrides.num_hidden_layer" in message
    assert "did you mean 'num_hidden_layers'" in message and "Wav2Vec2Config" in message


def test_config_override_of_the_wrong_type_names_the_key(encoder_config) -> None:
    config = encoder_config("wav2vec2")
    config["config_overrides"]["hidden_size"] = "abc"
    message = _error(config)
    assert message.startswith("encoder.config_overrides.hidden_size: 'abc' is refused")
    assert "expected int" in message  # transformers' own reason is kept


def test_inconsistent_config_overrides_name_the_section(encoder_config) -> None:
    config = encoder_config("wav2vec2")
    config["config_overrides"]["num_attention_heads"] = 5  # does not divide hidden_size 32
    message = _error(config)
    assert "encoder.config_overrides" in message and "divisible" in message


def test_overrides_that_leave_weights_random_are_refused(saved) -> None:
    folder = saved("wav2vec2")
    with pytest.raises(ValueError) as caught:
        SSLEncoder({"pretrained": str(folder), "config_overrides": {"num_hidden_layers": 3}})
    message = str(caught.value)
    assert "encoder.pretrained" in message and str(folder) in message
    assert "encoder.layers.2." in message


def test_pretrained_and_hf_config_together_are_refused(saved) -> None:
    message = _error({"pretrained": str(saved("wav2vec2")), "hf_config": {"hidden_size": 32}})
    assert message == f"{KEY}: set pretrained or hf_config, not both"


# ---------------------------------------------------------------------------- 6. HF folders
def test_truncated_safetensors_names_the_file(saved) -> None:
    folder = saved("wavlm")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError) as caught:
        SSLEncoder({"kind": "wavlm", "pretrained": str(folder)})
    message = str(caught.value)
    assert message.startswith(f"encoder.pretrained: {weights} is corrupt or truncated")


def test_folder_without_weights_names_the_key(saved) -> None:
    folder = saved("wav2vec2")
    (folder / "model.safetensors").unlink()
    message = _error({"pretrained": str(folder)})
    assert message.startswith(f"encoder.pretrained: {folder} has a config.json but no ")
    assert "model.safetensors / pytorch_model.bin" in message


def test_folder_without_config_names_the_key(tmp_path) -> None:
    message = _error({"pretrained": str(tmp_path)})
    assert f"{tmp_path} has no config.json" in message and "encoder.pretrained" in message


# ---------------------------------------------------------------------------- 7. fairseq
def _fairseq_checkpoint(
    encoder_config, path: pathlib.Path, kind: str = "wav2vec2", **extra: object
) -> SSLEncoder:
    original = SSLEncoder(encoder_config(kind)).eval()
    state = hf_to_fairseq_state_dict(original.model)
    cfg = dict(TINY_FAIRSEQ_CFG)
    if kind == "wavlm":
        cfg.update(num_buckets=32, max_distance=64, relative_position_embedding=True)
    torch.save({"cfg": cfg, "model": state, **extra}, path)
    return original


@pytest.mark.parametrize(("saved_kind", "kind"), [("wavlm", "wav2vec2"), ("wav2vec2", "wavlm")])
def test_kind_must_match_the_fairseq_checkpoint(encoder_config, tmp_path, saved_kind, kind):
    path = tmp_path / f"{saved_kind}.pt"
    _fairseq_checkpoint(encoder_config, path, kind=saved_kind)
    message = _error({"kind": kind, "pretrained": str(path)})
    # Load-time errors name the encoder section as SSLEncoder sees it, like the folder one.
    assert message.startswith(
        f"encoder.kind is {kind} but {path} looks like a {saved_kind} checkpoint ("
    )
    assert message.endswith(f"; set encoder.kind: {saved_kind}")
    if saved_kind == "wavlm":
        assert re.search(r"WavLM's relative position weights \(encoder\.layers\.\d+\.", message)
    assert "unconsumed" not in message and "missing" not in message
    # The kind it names loads the file.
    assert _build({"kind": saved_kind, "pretrained": str(path)}) is not None


@pytest.mark.parametrize("content", [bytes(range(7, 250)) * 40, b""])
def test_random_or_empty_checkpoint_is_reported_as_damaged(tmp_path, content) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    message = _error({"pretrained": str(path)})
    assert message.startswith(f"encoder.pretrained: {path} is not a readable torch checkpoint")
    assert "allow_pickle" not in message


def test_truncated_checkpoint_is_corrupt_not_unsafe(encoder_config, tmp_path) -> None:
    path = tmp_path / "model.pt"
    _fairseq_checkpoint(encoder_config, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _error({"pretrained": str(path)})
    assert str(path) in message and "corrupt or truncated" in message
    assert "allow_pickle" not in message


def test_intact_pickled_checkpoint_suggests_allow_pickle(encoder_config, tmp_path) -> None:
    path = tmp_path / "model.pt"
    original = _fairseq_checkpoint(encoder_config, path, extra=pathlib.PurePosixPath("/a"))
    message = _error({"pretrained": str(path)})
    assert str(path) in message and "encoder.allow_pickle: true" in message
    assert "corrupt" not in message
    loaded = SSLEncoder({"pretrained": str(path), "allow_pickle": True})
    assert torch.equal(
        loaded.model.encoder.layers[0].attention.k_proj.weight,
        original.model.encoder.layers[0].attention.k_proj.weight,
    )


@pytest.mark.parametrize("name", ["model.pth", "model.ckpt", "model"])
def test_any_checkpoint_file_is_read_as_fairseq(encoder_config, tmp_path, name) -> None:
    path = tmp_path / name
    original = _fairseq_checkpoint(encoder_config, path)
    loaded = SSLEncoder({"pretrained": str(path)}).eval()
    assert loaded.conversion_report.missing == []
    for mine, theirs in zip(loaded.model.parameters(), original.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_checkpoint_without_cfg_or_args_names_the_path(tmp_path) -> None:
    path = tmp_path / "bare.pt"
    torch.save({"model": {}, "extra": argparse.Namespace(a=1)}, path)
    message = _error({"pretrained": str(path)})
    assert re.search(rf"{re.escape(str(path))}.*neither 'cfg' nor 'args'", message)
    assert "encoder.pretrained" in message
