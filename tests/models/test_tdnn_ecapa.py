from __future__ import annotations

import pytest
import torch

from sv_kedro.models.ecapa import ECAPATDNN
from sv_kedro.models.factory import build_model
from sv_kedro.models.tdnn import MaskedBatchNorm1d, XVectorTDNN


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_ecapa_parameter_counts_match_the_paper() -> None:
    # Desplanques et al. 2020, Table 1: 6.2M (C=512) and 14.7M (C=1024) parameters.
    assert round(_count(ECAPATDNN(80, 512)) / 1e6, 1) == 6.2
    assert round(_count(ECAPATDNN(80, 1024)) / 1e6, 1) == 14.7


def test_xvector_architecture() -> None:
    tdnn = XVectorTDNN()
    assert [layer.conv.kernel_size[0] for layer in tdnn.layers] == [5, 3, 3, 1, 1]
    assert [layer.conv.dilation[0] for layer in tdnn.layers] == [1, 2, 3, 1, 1]
    assert tdnn.layers[-1].conv.out_channels == 1500 and tdnn.output_dim == 3000
    assert tdnn.context == 14
    with pytest.raises(ValueError, match="more than 14 feature frames"):
        tdnn(torch.randn(1, 10, 40))


@pytest.mark.parametrize("architecture", ["xvector", "ecapa_tdnn"])
def test_fbank_models_shapes_and_padding_invariance(architecture, fbank_waves) -> None:
    config = {"architecture": architecture, "n_classes": 4}
    if architecture == "xvector":
        config["xvector"] = {"channels": 32, "stats_channels": 48}
        expected_dim = 512  # segment layer 6 (the paper's embedding a)
    else:
        config["ecapa"] = {"channels": 64, "mfa_channels": 96}
        expected_dim = 192
    model = build_model(config)
    waves, lengths = fbank_waves
    out = model(waves, lengths)
    assert out.embedding.shape == (3, expected_dim) and out.logits.shape == (3, 4)
    embeddings = model.embed(waves, lengths)
    assert model.training  # embed restores the mode
    for row, length in enumerate(lengths.tolist()):
        alone = model.embed(waves[row : row + 1, :length])
        torch.testing.assert_close(embeddings[row : row + 1], alone, atol=1e-5, rtol=1e-4)


def test_ecapa_default_embedding_is_192_and_uses_80_mels() -> None:
    model = build_model({"architecture": "ecapa_tdnn", "n_classes": 3})
    assert model.frontend.n_mels == 80 and model.embedding_dim == 192
    assert model.model_config["head"]["classifier"] == "cosine"
    cosines = model(torch.randn(2, 4000)).logits
    assert cosines.abs().max() <= 1.0 + 1e-6


def test_masked_batch_norm_ignores_padding_in_training() -> None:
    norm = MaskedBatchNorm1d(3)
    inputs = torch.randn(2, 3, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    junk = inputs.clone()
    junk[1, :, 4:] = 100.0
    first = norm(inputs, mask)
    running = norm.running_mean.clone()
    norm.reset_running_stats()
    second = norm(junk, mask)
    torch.testing.assert_close(first[0], second[0])
    torch.testing.assert_close(norm.running_mean, running)
    valid = torch.cat([inputs[0], inputs[1, :, :4]], dim=1)
    torch.testing.assert_close(running, 0.1 * valid.mean(dim=1))
