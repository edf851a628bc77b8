from __future__ import annotations

import pytest
import torch

from sv_kedro.models.mhfa import MHFA


def _states() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    states = torch.randn(2, 9, 16, 4, generator=generator)  # [batch, frames, dim, L+1]
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    return states, mask


def test_mhfa_default_sizes_give_256_dim_output() -> None:
    states, mask = _states()
    mhfa = MHFA(dim=16, num_layers=4)
    out = mhfa(states, mask)
    assert out.shape == (2, 256)
    assert mhfa.head_scores.out_features == 64 and mhfa.key_compression.out_features == 128


def test_padded_frames_change_nothing() -> None:
    states, mask = _states()
    mhfa = MHFA(16, 4, compression_dim=8, n_heads=3, embedding_dim=10)
    before = mhfa(states, mask)
    changed = states.clone()
    changed[1, 5:] = torch.randn_like(changed[1, 5:]) * 100
    after = mhfa(changed, mask)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    alone = mhfa(states[1:, :5], None)
    torch.testing.assert_close(before[1:], alone, atol=1e-5, rtol=1e-5)
    # a valid frame does matter
    changed[1, 0] += 1.0
    assert not torch.allclose(mhfa(changed, mask)[1], before[1])


def test_layer_weights_receive_gradients_and_are_normalised() -> None:
    states, mask = _states()
    mhfa = MHFA(16, 4, compression_dim=8, n_heads=3, embedding_dim=10)
    mhfa(states, mask).pow(2).sum().backward()
    assert mhfa.key_layer_weights.grad is not None and mhfa.key_layer_weights.grad.abs().sum() > 0
    assert mhfa.value_layer_weights.grad is not None
    assert mhfa.value_layer_weights.grad.abs().sum() > 0
    key_weights, value_weights = mhfa.layer_weights()
    torch.testing.assert_close(key_weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(value_weights, torch.full((4,), 0.25))


def test_mhfa_rejects_wrong_layer_count() -> None:
    states, mask = _states()
    with pytest.raises(ValueError, match="expected hidden states"):
        MHFA(16, 5)(states, mask)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"n_heads": 0}, r"MHFA: n_heads must be an integer >= 1, got 0"),
        ({"compression_dim": -8}, r"MHFA: compression_dim must be an integer >= 1, got -8"),
        # A float or a string failed inside nn.Linear with a message about tensor sizes.
        ({"n_heads": 2.5}, r"MHFA: n_heads must be an integer >= 1, got 2\.5"),
        ({"embedding_dim": "256"}, r"MHFA: embedding_dim must be an integer >= 1, got '256'"),
        ({"num_layers": 0}, r"MHFA: num_layers must be an integer >= 1, got 0"),
    ],
)
def test_mhfa_names_the_size_at_fault(sizes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MHFA(**{"dim": 16, "num_layers": 4, **sizes})  # type: ignore[arg-type]


def test_ssl_mhfa_model_config_names_its_keys() -> None:
    from sv_kedro.models.factory import normalize_model_config

    base = {"architecture": "ssl_mhfa", "encoder": {"kind": "wavlm"}}
    with pytest.raises(ValueError, match=r"model\.mhfa\.n_heads must be >= 1, got 0"):
        normalize_model_config({**base, "mhfa": {"n_heads": 0}}, "model")
    with pytest.raises(ValueError, match=r"model\.mhfa: unknown key\(s\) \['layers'\]"):
        normalize_model_config({**base, "mhfa": {"layers": [1, 2]}}, "model")
    # bool is an int in Python: ``n_classes: true`` built a one-class classifier.
    with pytest.raises(ValueError, match=r"model\.n_classes must be a non-negative integer"):
        normalize_model_config({**base, "n_classes": True}, "model")
    assert normalize_model_config({**base, "mhfa": {"n_heads": "4"}}, "model")["mhfa"] == {
        "compression_dim": 128,
        "n_heads": 4,
        "embedding_dim": 256,
    }
