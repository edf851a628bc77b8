"""supervised_training: settings that a training worker would refuse, misuse or ignore are
refused when a system's node starts (and by the session-start check of every system),
naming the key, before anything is written."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader

from sv_kedro.pipelines.supervised_training import SYSTEMS
from sv_kedro.pipelines.supervised_training.nodes import (
    check_system,
    find_learning_rate,
    resolve_model_config,
    resolve_training_config,
    train_speaker_model,
)
from sv_kedro.pipelines.supervised_training.settings import check_supervised_settings
from sv_kedro.settings import CONFIG_LOADER_ARGS


def parameters(project_root: Path, env: str | None = None) -> dict[str, Any]:
    extra = {"env": env} if env else {}
    loader = OmegaConfigLoader(str(project_root / "conf"), **extra, **CONFIG_LOADER_ARGS)
    return copy.deepcopy(dict(loader["parameters"]))


@pytest.fixture(scope="module")
def base(project_root: Path) -> dict[str, Any]:
    return parameters(project_root)


def blocks(base: dict[str, Any], system: str, **changes: dict[str, Any]) -> dict[str, Any]:
    """The system's blocks of conf/base with ``changes`` merged into them one level deep."""
    section = copy.deepcopy(base[system])
    for block, values in changes.items():
        section[block] = {**(section.get(block) or {}), **values}
    return {key: section[key] for key in ("model", "loss", "training", "data", "run")}


@pytest.mark.parametrize("env", [None, "voxceleb", "folder"])
def test_every_shipped_system_passes(project_root: Path, env: str | None):
    params = parameters(project_root, env)
    assert set(SYSTEMS) <= set(params)
    check_supervised_settings(params)


@pytest.mark.parametrize(
    ("system", "changes", "message"),
    [
        # Trained without a word before: AAM on a linear head's clamped logits, CE on a
        # cosine head's unscaled cosines (loss stuck at log(speakers)).
        (
            "wav2vec2_sv_ce",
            {"loss": {"name": "aam"}},
            r"loss\.name 'aam' needs model\.head\.classifier 'cosine', got 'linear'",
        ),
        (
            "wav2vec2_sv_aam",
            {"loss": {"name": "ce"}},
            r"loss\.name 'ce' needs model\.head\.classifier 'linear', got 'cosine'",
        ),
        (
            "ecapa_tdnn",
            {"loss": {"name": "ce"}},
            r"loss\.name 'ce' needs model\.head\.classifier 'linear'",
        ),
        # Failed in the worker: "'NoneType' object has no attribute 'dim'".
        ("wav2vec2_sv_ce", {"loss": {"name": "ctc"}}, r"loss\.name ctc trains frame-level"),
        ("wav2vec2_sv_ctc", {"loss": {"name": "ce"}}, r"model\.pooling 'none'"),
        # Failed in the worker: KeyError 'a' / 'labels'.
        ("wav2vec2_sv_ce", {"loss": {"name": "bce"}}, r"ssl_paired and data\.pairs true go"),
        ("wav2vec2_sv_bce", {"loss": {"name": "ce"}}, r"ssl_paired and data\.pairs true go"),
        ("wav2vec2_sv_bce", {"data": {"pairs": False}}, r"data\.pairs False"),
        # Ignored by the frame-level head.
        (
            "wav2vec2_sv_ctc",
            {"model": {"head": {"classifier": "cosine"}}},
            r"model\.head: \['classifier'\] are not used by the frame-level \(CTC\) head",
        ),
    ],
)
def test_a_loss_the_model_or_batches_do_not_fit_is_refused(base, system, changes, message):
    with pytest.raises(ValueError, match=message):
        check_system(**blocks(base, system, **changes))


@pytest.mark.parametrize(
    ("system", "changes", "message"),
    [
        # A KeyError at the first validation: 5000 steps into a paper-scale run.
        ("xvector", {"training": {"monitor": "min_dcf"}}, r"training\.monitor must be one of"),
        # "'NoneType' object has no attribute 'kind'" in the worker.
        ("xvector", {"training": {"schedule": None}}, r"training\.schedule must be a mapping"),
        # Built in the worker, after the SSL encoder, without the key.
        ("wav2vec2_sv_aam", {"model": {"pooling": "avg"}}, r"model\.pooling: unknown pooling"),
        (
            "wav2vec2_sv_aam",
            {"model": {"pooling": {"name": "quantile", "quantiles": "0.1,0.9"}}},
            r"model\.pooling\.quantiles must be a non-empty list",
        ),
        ("wav2vec2_sv_aam", {"loss": {"scale": float("inf")}}, r"loss: .*scale must be a finite"),
        ("wav2vec2_sv_aam", {"training": {"layer_decay": 0}}, r"training\.layer_decay must lie"),
        ("wav2vec2_sv_ctc", {"run": {"gate": {"enabled": True}}}, r"run: the loss gate works"),
    ],
)
def test_values_the_worker_would_meet_late_are_refused_first(base, system, changes, message):
    with pytest.raises(ValueError, match=message):
        check_system(**blocks(base, system, **changes))


def test_the_training_node_refuses_before_writing_anything(base, tmp_path: Path):
    work_dir = tmp_path / "runs"
    given = blocks(base, "wav2vec2_sv_ce", loss={"name": "aam"}, run={"work_dir": str(work_dir)})
    manifest = pd.DataFrame({"utt_id": ["a"], "speaker_index": [0]})
    with pytest.raises(ValueError, match=r"loss\.name 'aam' needs model\.head\.classifier"):
        train_speaker_model(
            manifest, manifest, pd.DataFrame(), **given, distributed={}, lr_suggestion={}
        )
    assert not work_dir.exists()


@pytest.mark.parametrize(
    ("lr_finder", "message"),
    [
        # Training went on with training.lr, as if nothing had been asked.
        ({"use_suggestion": True}, r"lr_finder\.use_suggestion is true but lr_finder\.enabled"),
        # Checked only inside the sweep, without the key, or not at all.
        ({"min_lr": 1.0, "max_lr": 0.1}, r"lr_finder\.min_lr and lr_finder\.max_lr need 0 <"),
        ({"min_lr": -1.0}, r"lr_finder\.min_lr and lr_finder\.max_lr need 0 <"),
        ({"num_steps": 2}, r"lr_finder\.num_steps must be >= 3"),
        ({"divergence_factor": 0.5}, r"lr_finder\.divergence_factor must be > 1"),
        ({"skip_start": -5}, r"lr_finder\.skip_start must be >= 0"),
    ],
)
def test_lr_finder_settings_are_checked_even_while_it_is_disabled(base, lr_finder, message):
    given = blocks(base, "xvector")
    with pytest.raises(ValueError, match=message):
        find_learning_rate(pd.DataFrame(), **given, lr_finder={"enabled": False, **lr_finder})


def test_the_session_check_names_the_system(base):
    params = copy.deepcopy(base)
    params["wavlm_mhfa_sv"]["loss"]["name"] = "ce"
    with pytest.raises(ValueError, match=r"^wavlm_mhfa_sv\.loss\.name 'ce' needs model\.head"):
        check_supervised_settings(params)
    params = copy.deepcopy(base)
    params["xvector"]["training"]["schedule"]["gamma"] = 2
    with pytest.raises(ValueError, match=r"^xvector\.training\.schedule\.gamma must lie in"):
        check_supervised_settings(params)


def test_resolved_configs_are_unchanged_for_good_settings():
    model = {"architecture": "ssl", "encoder": {"kind": "wav2vec2"}, "pooling": "first+cls"}
    assert resolve_model_config(model) == model
    training = resolve_training_config({"max_steps": 5, "monitor": "min_dcf_0.05"})
    assert training == {"max_steps": 5, "monitor": "min_dcf_0.05", "encoder_prefix": "frontend."}
