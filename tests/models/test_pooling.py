from __future__ import annotations

import pytest
import torch

from sv_kedro.models.pooling import POOLING_NAMES, build_pooling, pooling_options

DIM = 6


def _batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 4, 1]
    frames = torch.randn(3, 7, DIM, generator=generator)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, :length] = True
        frames[row, length:] = 1e3  # padding junk
    return frames, mask, lengths


EXPECTED_DIMS = {
    "mean": DIM,
    "mean+std": 2 * DIM,
    "attentive": 2 * DIM,
    "quantile": 5 * DIM,
    "max": DIM,
    "first": DIM,
    "last": DIM,
    "middle": DIM,
    "random": DIM,
    "first+cls": DIM,
}


@pytest.mark.parametrize("name", [n for n in POOLING_NAMES if n != "none"])
def test_pooling_shape_and_padding_invariance(name: str) -> None:
    pooling = build_pooling(name, DIM).eval()
    frames, mask, lengths = _batch()
    pooled = pooling(frames, mask)
    assert pooled.shape == (3, EXPECTED_DIMS[name]) == (3, pooling.output_dim)
    assert torch.isfinite(pooled).all()
    for row, length in enumerate(lengths):
        alone = pooling(frames[row : row + 1, :length], None)
        torch.testing.assert_close(pooled[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_none_returns_frames() -> None:
    pooling = build_pooling("none", DIM)
    frames, mask, _ = _batch()
    assert pooling.frame_level and pooling.output_dim == DIM
    assert torch.equal(pooling(frames, mask), frames)


def test_simple_poolings_match_definitions() -> None:
    frames, mask, lengths = _batch()
    valid = frames[1, : lengths[1]]
    results = {n: build_pooling(n, DIM).eval()(frames, mask)[1] for n in EXPECTED_DIMS}
    torch.testing.assert_close(results["mean"], valid.mean(0))
    std = valid.std(0, unbiased=False)
    torch.testing.assert_close(results["mean+std"], torch.cat([valid.mean(0), std]))
    torch.testing.assert_close(results["max"], valid.max(0).values)
    torch.testing.assert_close(results["first"], valid[0])
    torch.testing.assert_close(results["last"], valid[-1])
    torch.testing.assert_close(results["middle"], valid[(lengths[1] - 1) // 2])
    expected_q = torch.quantile(valid, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), dim=0)
    torch.testing.assert_close(results["quantile"], expected_q.T.reshape(-1))


def test_random_pooling_draws_valid_frames_in_training_and_middle_in_eval() -> None:
    frames, mask, lengths = _batch()
    pooling = build_pooling("random", DIM)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        pooled = pooling.train()(frames, mask)
        for row, length in enumerate(lengths):
            matches = (frames[row, :length] == pooled[row]).all(dim=1).nonzero().flatten().tolist()
            assert len(matches) == 1  # always one of the valid frames, never padding
            if row == 0:
                seen.add(matches[0])
    assert len(seen) > 3  # it really is random over the 7 valid frames
    middle = build_pooling("middle", DIM)(frames, mask)
    assert torch.equal(pooling.eval()(frames, mask), middle)


def test_attentive_weights_learn() -> None:
    pooling = build_pooling("attentive", DIM, hidden_dim=4)
    frames, mask, _ = _batch()
    pooling(frames, mask).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pooling.parameters())


def test_build_pooling_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        build_pooling("avg", DIM)
    with pytest.raises(ValueError, match="unknown option"):
        build_pooling("mean", DIM, hidden_dim=3)
    frames, mask, _ = _batch()
    with pytest.raises(ValueError, match="no valid frame"):
        build_pooling("mean", DIM)(frames, torch.zeros_like(mask))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        # Iterated the string's characters: "could not convert string to float: '.'".
        ("quantile", {"quantiles": "0.1,0.9"}, r"quantiles must be a non-empty list"),
        ("quantile", {"quantiles": 0.5}, r"quantiles must be a non-empty list"),
        # An empty list built a pooling of output_dim 0.
        ("quantile", {"quantiles": []}, r"quantiles must be a non-empty list"),
        ("quantile", {"quantiles": [True, 0.5]}, r"quantiles\[0\] must be a number, got True"),
        ("quantile", {"quantiles": [0.5, 1.5]}, r"quantiles must lie in \[0, 1\]"),
        # 0 built attention weights that ignore the frames; others failed deep in torch.
        ("attentive", {"hidden_dim": 0}, r"hidden_dim must be >= 1, got 0"),
        ("attentive", {"hidden_dim": 2.5}, r"hidden_dim must be an integer, got 2\.5"),
        # NaN gave a NaN CLS token; a string a torch TypeError.
        ("first+cls", {"init_std": float("nan")}, r"init_std must be a finite number >= 0"),
        ("first+cls", {"init_std": "x"}, r"init_std must be a number, got 'x'"),
        ("first+cls", {"hidden_dim": 8}, r"'first\+cls': unknown option\(s\) \['hidden_dim'\]"),
    ],
)
def test_pooling_options_are_checked_naming_the_key(name, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_pooling(name, DIM, **options)
    with pytest.raises(ValueError, match=r"model\.pooling"):
        pooling_options(name, options, "model.pooling")


def test_checked_pooling_options_are_converted() -> None:
    assert pooling_options("attentive", {"hidden_dim": "16"}) == {"hidden_dim": 16}
    quantile = build_pooling("quantile", DIM, quantiles=[0.1, "0.9"])
    assert quantile.output_dim == 2 * DIM
    torch.testing.assert_close(quantile.quantiles, torch.tensor([0.1, 0.9]))
