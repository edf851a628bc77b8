from __future__ import annotations

import json

import pytest
import torch

from sv_kedro.models.factory import build_model, checkpoint_model_config
from sv_kedro.models.paired import PairedSpeakerModel

ALL_POOLINGS = ["mean", "mean+std", "attentive", "quantile", "max", "first", "last", "middle",
                "random", "first+cls"]  # fmt: skip
FBANK = ("xvector", "ecapa_tdnn")


def _configs(encoder: dict) -> list[dict]:
    return [
        {"architecture": "ssl", "encoder": encoder, "pooling": "attentive", "n_classes": 4,
         "head": {"hidden_dims": [16], "embedding_layer": 0, "classifier": "cosine"}},
        {"architecture": "ssl", "encoder": encoder, "pooling": "none", "n_classes": 4},
        {"architecture": "ssl_mhfa", "encoder": {**encoder, "output_hidden_states": True},
         "n_classes": 4, "mhfa": {"compression_dim": 8, "n_heads": 4, "embedding_dim": 12}},
        {"architecture": "ssl_paired", "encoder": encoder},
        {"architecture": "xvector", "n_classes": 4,
         "xvector": {"channels": 16, "stats_channels": 24}},
        {"architecture": "ecapa_tdnn", "n_classes": 4,
         "ecapa": {"channels": 16, "mfa_channels": 24, "embedding_dim": 8}},
    ]  # fmt: skip


def test_build_model_round_trip_through_json(encoder_config, padded_waves, fbank_waves) -> None:
    for config in _configs(encoder_config("wavlm", "group")):
        waves, lengths = fbank_waves if config["architecture"] in FBANK else padded_waves
        model = build_model(json.loads(json.dumps(config)))
        payload_config = json.loads(json.dumps(checkpoint_model_config(model)))
        assert payload_config["architecture"] == config["architecture"]
        rebuilt = build_model(payload_config)
        rebuilt.load_state_dict(model.state_dict())
        if isinstance(model, PairedSpeakerModel):
            model.eval(), rebuilt.eval()
            with torch.no_grad():
                expected = model.score_pairs(waves, lengths, waves.flip(0), lengths.flip(0))
                got = rebuilt.score_pairs(waves, lengths, waves.flip(0), lengths.flip(0))
        else:
            expected, got = model.embed(waves, lengths), rebuilt.embed(waves, lengths)
        torch.testing.assert_close(got, expected)


def test_every_pooling_through_the_ssl_model(encoder_config, padded_waves) -> None:
    waves, lengths = padded_waves
    encoder = encoder_config("wav2vec2")
    for pooling in ALL_POOLINGS:
        model = build_model({"architecture": "ssl", "encoder": encoder, "pooling": pooling,
                             "n_classes": 3})  # fmt: skip
        model.eval()
        with torch.no_grad():
            out = model(waves, lengths)
            alone = model(waves[2:, : lengths[2]], lengths[2:])
        assert out.logits.shape == (3, 3) and out.embedding.shape[1] == model.embedding_dim
        torch.testing.assert_close(out.embedding[2:], alone.embedding, atol=1e-5, rtol=1e-4)


def test_first_cls_is_at_position_zero_of_the_transformer_input(encoder_config, padded_waves):
    model = build_model({"architecture": "ssl", "encoder": encoder_config("wavlm"),
                         "pooling": "first+cls", "n_classes": 3}).eval()  # fmt: skip
    seen = {}
    transformer = model.frontend.model.encoder
    handle = transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.update(inputs=args[0].clone(), mask=kwargs["attention_mask"]),
        with_kwargs=True,
    )
    waves, lengths = padded_waves
    with torch.no_grad():
        model(waves, lengths)
    handle.remove()
    cnn_frames = model.frontend.output_lengths(lengths)
    assert seen["inputs"].shape[1] == int(cnn_frames.max()) + 1
    assert seen["mask"].sum(1).tolist() == (cnn_frames + 1).tolist()
    for row in range(3):
        assert torch.equal(seen["inputs"][row, 0], model.pooling.cls_token)
    # and the CLS vector learns
    model.train()(waves, lengths).logits.sum().backward()
    assert model.pooling.cls_token.grad.abs().sum() > 0


def test_ctc_variant_outputs_frame_logits(encoder_config, padded_waves) -> None:
    model = build_model({"architecture": "ssl", "encoder": encoder_config("wav2vec2"),
                         "pooling": "none", "n_classes": 5})  # fmt: skip
    waves, lengths = padded_waves
    out = model(waves, lengths)
    frames = model.frontend.output_lengths(lengths)
    assert out.logits is None
    assert out.frame_logits.shape == (3, int(frames.max()), 6)  # n_classes + blank
    assert out.frame_mask.sum(1).tolist() == frames.tolist()
    assert out.embedding.shape == (3, 64)  # mean+std of 32-d pre-logit features


@pytest.mark.parametrize("head", PairedSpeakerModel.heads)
def test_paired_model_is_padding_invariant(encoder_config, padded_waves, head: str) -> None:
    model = build_model(
        {
            "architecture": "ssl_paired",
            "encoder": encoder_config("wav2vec2"),
            "paired": {"head": head},
        }
    )
    model.eval()
    waves, lengths = padded_waves
    other, other_lengths = waves.flip(0), lengths.flip(0)
    with torch.no_grad():
        logits = model.score_pairs(waves, lengths, other, other_lengths)
        assert logits.shape == (3,)
        for row in range(3):
            alone = model.score_pairs(
                waves[row : row + 1, : lengths[row]], None,
                other[row : row + 1, : other_lengths[row]], None,
            )  # fmt: skip
            torch.testing.assert_close(logits[row : row + 1], alone, atol=1e-5, rtol=1e-4)
        swapped = model.score_pairs(other, other_lengths, waves, lengths)
    assert not torch.allclose(swapped, logits)  # order matters: [CLS] a [SEP] b [END]


def test_paired_model_segment_cosine_head_reads_each_side(encoder_config) -> None:
    """An utterance against itself scores above the same utterance against other frames."""
    model = build_model(
        {
            "architecture": "ssl_paired",
            "encoder": encoder_config("wav2vec2"),
            "paired": {"head": "segment_cosine"},
        }
    ).eval()
    wave = torch.randn(1, 4000)
    with torch.no_grad():
        frames, mask = model.frontend.extract_features(wave)[:2]
        same = model.pair_logits(frames, mask, frames, mask)
        other = model.pair_logits(frames, mask, torch.randn_like(frames), mask)
    assert float(same) > float(other)
    with pytest.raises(ValueError, match=r"paired.head must be one of"):
        build_model(
            {
                "architecture": "ssl_paired",
                "encoder": encoder_config("wav2vec2"),
                "paired": {"head": "x"},
            }
        )


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="architecture"):
        build_model({"architecture": "resnet"})
    with pytest.raises(ValueError, match=r"model_config.head: unknown key\(s\) \['hidden'\]"):
        build_model({"architecture": "ecapa_tdnn", "head": {"hidden": [3]}})
    with pytest.raises(ValueError, match=r"\['pooling'\] are not used by architecture 'xvector'"):
        build_model({"architecture": "xvector", "pooling": "mean"})
    with pytest.raises(ValueError, match="n_classes"):
        build_model({"architecture": "xvector", "n_classes": -1})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"ecapa": {"channels": "abc"}}, r"ecapa\.channels must be an integer, got 'abc'"),
        ({"ecapa": {"channels": 0}}, r"ecapa\.channels must be >= 1, got 0"),
        ({"ecapa": {"dilations": [2, "x", 4]}}, r"ecapa\.dilations\[1\] must be an integer"),
        ({"fbank": {"mean_norm": "no"}}, r"fbank\.mean_norm must be true or false, got 'no'"),
        ({"head": {"dropout": 1.5}}, r"head\.dropout must be in \[0, 1\), got 1\.5"),
        ({"head": {"hidden_dims": 256}}, r"head\.hidden_dims must be a list of whole numbers"),
    ],
)
def test_section_values_are_checked_naming_the_key(config, message) -> None:
    with pytest.raises(ValueError, match=rf"model_config\.{message}"):
        build_model({"architecture": "ecapa_tdnn", **config})


def test_numbers_given_as_strings_build_the_same_model() -> None:
    # --params values arrive as strings when they are not YAML numbers.
    given = build_model({"architecture": "ecapa_tdnn", "ecapa": {"channels": "32"}})
    assert given.model_config["ecapa"]["channels"] == 32
