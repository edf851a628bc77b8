from __future__ import annotations

import warnings

import pytest
import torch

from sv_kedro.models.factory import build_model
from sv_kedro.models.ssl_encoder import SSLEncoder


@pytest.mark.parametrize(("kind", "norm"), [("wav2vec2", "group"), ("wavlm", "layer")])
def test_padded_batch_equals_one_by_one(kind, norm, encoder_config, padded_waves) -> None:
    encoder = SSLEncoder(encoder_config(kind, norm, output_hidden_states=True)).eval()
    waves, lengths = padded_waves
    with torch.no_grad():
        out = encoder(waves, lengths)
        assert out.hidden_states.shape == (*out.frames.shape, encoder.num_layers + 1)
        # post-LN models: the last hidden state is the output
        torch.testing.assert_close(out.hidden_states[..., -1], out.frames)
        expected_frames = encoder.output_lengths(lengths)
        assert out.mask.sum(1).tolist() == expected_frames.tolist()
        for row, length in enumerate(lengths.tolist()):
            alone = encoder(waves[row : row + 1, :length])
            n = alone.frames.shape[1]
            assert n == expected_frames[row]
            torch.testing.assert_close(out.frames[row, :n], alone.frames[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                out.hidden_states[row, :n], alone.hidden_states[0], atol=1e-5, rtol=1e-4
            )


@pytest.mark.parametrize("kind", ["wav2vec2", "wavlm"])
def test_an_unpadded_batch_runs_without_a_mask_to_the_same_frames(kind, encoder_config) -> None:
    encoder = SSLEncoder(encoder_config(kind, output_hidden_states=True)).eval()
    waves = torch.randn(2, 2400, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = encoder(waves, torch.tensor([2400, 2400]))
        # WavLM's masked attention mixes a bool padding mask with a float bias, which torch
        # deprecates; training crops have no padding and need no mask.
        assert not [w for w in caught if "key_padding_mask" in str(w.message)]
        hidden, mask = encoder.extract_features(waves)[:2]
        masked = encoder.model.encoder(hidden.clone(), attention_mask=mask.bool())
    assert mask.all()
    torch.testing.assert_close(out.frames, masked.last_hidden_state, atol=1e-6, rtol=1e-5)
    assert out.hidden_states.shape[-1] == encoder.num_layers + 1


@pytest.mark.parametrize("kind", ["wav2vec2", "wavlm"])
def test_save_pretrained_round_trip(kind, encoder_config, padded_waves, tmp_path) -> None:
    encoder = SSLEncoder(encoder_config(kind)).eval()
    encoder.model.save_pretrained(tmp_path)
    loaded = SSLEncoder({"kind": kind, "pretrained": str(tmp_path)}).eval()
    waves, lengths = padded_waves
    with torch.no_grad():
        torch.testing.assert_close(loaded(waves, lengths).frames, encoder(waves, lengths).frames)
        reset = SSLEncoder({"kind": kind, "pretrained": str(tmp_path), "reset_weights": True})
        assert reset.model.config.hidden_size == 32
        assert not torch.allclose(
            reset.eval()(waves, lengths).frames, encoder(waves, lengths).frames
        )


def _step(model, waves, lengths, optimizer) -> None:
    optimizer.zero_grad()
    out = model(waves, lengths)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
    optimizer.step()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def test_freezing_cnn_and_initial_encoder_freeze(encoder_config, padded_waves) -> None:
    config = {
        "architecture": "ssl",
        "encoder": encoder_config(
            "wav2vec2",
            completely_freeze_feature_extractor=True,
            freeze_encoder_steps=2,
            layerdrop=0.0,  # every layer must take part in the one thawed step
        ),
        "pooling": "mean",
        "n_classes": 3,
    }
    model = build_model(config)
    encoder = model.frontend.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    waves, lengths = padded_waves
    cnn = {k for k, _ in encoder.named_parameters() if k.startswith("feature_extractor.")}
    for step in range(2):
        model.set_step(step)
        assert model.encoder_frozen(step)
        before = _snapshot(encoder)
        head_before = _snapshot(model.head)
        _step(model, waves, lengths, optimizer)
        assert _changed(before, encoder) == set()
        assert _changed(head_before, model.head)  # the head does train meanwhile
        assert all(p.grad is None for p in encoder.parameters())
        assert all(p.requires_grad for n, p in encoder.named_parameters() if n not in cnn)
    model.set_step(2)
    assert not model.encoder_frozen(2)
    before = _snapshot(encoder)
    _step(model, waves, lengths, optimizer)
    changed = _changed(before, encoder)
    assert changed and not (changed & cnn)  # transformer trains, CNN stays frozen
    assert "encoder.layers.0.attention.k_proj.weight" in changed


def test_spec_augment_only_in_training(encoder_config, padded_waves) -> None:
    encoder = SSLEncoder(encoder_config("wav2vec2", mask_time_prob=0.5, mask_time_length=2))
    waves, lengths = padded_waves
    torch.manual_seed(0)
    with torch.no_grad():
        trained = encoder.train()(waves, lengths).frames
        first = encoder.eval()(waves, lengths).frames
        second = encoder(waves, lengths).frames
    assert torch.equal(first, second)
    assert not torch.allclose(trained, first)


@pytest.mark.parametrize("kind", ["wav2vec2", "wavlm"])
def test_layerdrop_keeps_all_hidden_states(kind, encoder_config, padded_waves) -> None:
    encoder = SSLEncoder(encoder_config(kind, layerdrop=1.0, output_hidden_states=True)).train()
    waves, lengths = padded_waves
    out = encoder(waves, lengths)
    assert out.hidden_states.shape[-1] == encoder.num_layers + 1
    # every droppable layer was skipped, so the last state equals the one before it
    torch.testing.assert_close(out.hidden_states[..., -1], out.hidden_states[..., -2])


def test_gradient_checkpointing_and_waveform_normalisation(encoder_config, padded_waves) -> None:
    torch.manual_seed(3)
    encoder = SSLEncoder(
        encoder_config("wav2vec2", "group", gradient_checkpointing=True, normalize_waveform=True)
    ).train()
    waves, lengths = padded_waves
    encoder(waves, lengths).frames.pow(2).mean().backward()
    first_conv = encoder.model.feature_extractor.conv_layers[0].conv.weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    encoder.eval()
    with torch.no_grad():
        scaled = encoder(waves * 3.0, lengths).frames
        torch.testing.assert_close(scaled, encoder(waves, lengths).frames, atol=1e-4, rtol=1e-4)


def test_bad_config_and_inputs_are_reported(encoder_config) -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['hiden_size'\]"):
        SSLEncoder({"kind": "wavlm", "hiden_size": 3})
    with pytest.raises(ValueError, match="kind"):
        SSLEncoder({"kind": "hubert"})
    encoder = SSLEncoder(encoder_config("wav2vec2"))
    with pytest.raises(ValueError, match="lengths must be in"):
        encoder(torch.zeros(2, 800), torch.tensor([800, 900]))


def test_inputs_shorter_than_the_cnns_receptive_field_are_named(encoder_config) -> None:
    encoder = SSLEncoder(encoder_config("wav2vec2")).eval()
    need = encoder.min_input_samples
    assert encoder.output_lengths(torch.tensor([need - 1, need])).tolist() == [0, 1]
    with pytest.raises(ValueError, match=rf"inputs of {need - 1} samples .* the {need} samples"):
        encoder(torch.zeros(2, need - 1))
    with pytest.raises(ValueError, match=rf"needs {need} samples for one frame \(lengths"):
        encoder(torch.zeros(2, need + 5), torch.tensor([need + 5, need - 1]))
    assert encoder(torch.randn(1, need)).frames.shape[1] == 1
    # Training masks spans of time: fewer frames than a span cannot be masked.
    encoder.train()
    span = encoder.model.config.mask_time_length
    with pytest.raises(ValueError, match=rf"1 frame\(s\) per input, .*mask_time_length={span}"):
        encoder(torch.randn(1, need))
    exactly_one_span = int(
        encoder.output_lengths(torch.arange(need, 40 * need)).eq(span).nonzero()[0]
    )
    assert encoder(torch.randn(1, need + exactly_one_span)).frames.shape[1] == span
