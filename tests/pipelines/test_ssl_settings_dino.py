"""ssl_pseudo_labeling.dino: values that DINO's workers would refuse, or that trained silently
wrong, are refused when the session starts, naming the key, as are DINO settings that the
extraction, round 1 or LMFT would only find out about after DINO (or never)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from sv_kedro.pipelines.ssl_pseudo_labeling.nodes import deep_merge
from sv_kedro.pipelines.ssl_pseudo_labeling.settings import check_stage_settings
from sv_kedro.settings import CONFIG_LOADER_ARGS

XVECTOR = {
    "architecture": "xvector",
    "fbank": {"n_mels": 24},
    "xvector": {"channels": 16, "stats_channels": 32},
}


def section(project_root: Path, env: str | None = None) -> dict[str, Any]:
    extra = {"env": env} if env else {}
    loader = OmegaConfigLoader(str(project_root / "conf"), **extra, **CONFIG_LOADER_ARGS)
    return copy.deepcopy(dict(loader["parameters"]["ssl_pseudo_labeling"]))


@pytest.fixture(scope="module")
def base(project_root: Path) -> dict[str, Any]:
    return section(project_root)


@pytest.mark.parametrize("env", [None, "voxceleb", "folder"])
def test_shipped_environments_pass(project_root: Path, env: str | None) -> None:
    check_stage_settings(section(project_root, env))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # Refused before only when DINO's workers started.
        (
            {"dino": {"task": {"teacher_temperature": 0}}},
            r"ssl_pseudo_labeling\.dino\.task\.teacher_temperature must be > 0, got 0\.0",
        ),
        (
            {"dino": {"training": {"lr": -1}}},
            r"ssl_pseudo_labeling\.dino: training\.lr must be a finite number > 0",
        ),
        (
            {"dino": {"data": {"global_crops": 1, "local_crops": 0}}},
            r"ssl_pseudo_labeling\.dino\.data: DINO needs at least two views",
        ),
        (
            {"dino": {"model": {"encoder": {"ecapa": {"channels": "wide"}}}}},
            r"ssl_pseudo_labeling\.dino\.model\.encoder\.ecapa\.channels must be an integer",
        ),
        # Trained silently wrong before.
        (
            {"dino": {"model": {"head": {"hidden_dim": 0}}}},
            r"ssl_pseudo_labeling\.dino\.model\.head\.hidden_dim must be >= 1, got 0",
        ),
        (
            {"dino": {"model": {"head": {"n_prototypes": 0}}}},
            r"ssl_pseudo_labeling\.dino\.model\.head\.n_prototypes must be >= 1, got 0",
        ),
        (
            {"dino": {"task": {"ema_momentum": 0.999, "ema_momentum_end": 0.5}}},
            r"ssl_pseudo_labeling\.dino\.task\.ema_momentum_end=0\.5 is below",
        ),
        (
            {"dino": {"data": {"local_seconds": 3.0}}},
            r"ssl_pseudo_labeling\.dino\.data\.local_seconds=3\.0 is longer than "
            r"ssl_pseudo_labeling\.dino\.data\.global_seconds=1\.5",
        ),
        (
            {"dino": {"data": {"global_seconds": 20}}},
            r"crops of 20\.0 s are longer than the "
            r"ssl_pseudo_labeling\.dino\.data\.max_read_seconds=12\.0 s",
        ),
        (
            {"dino": {"model": {"encoder": {"fbank": {"sample_rate": 8000}}}}},
            r"ssl_pseudo_labeling\.dino\.data\.sample_rate=16000 is not the 8000 Hz the "
            r"encoder's filterbank takes",
        ),
        # Found only when extraction refused the trained DINO checkpoint.
        (
            {
                "dino": {
                    "model": {"encoder": {"fbank": {"sample_rate": 8000}}},
                    "data": {"sample_rate": 8000},
                }
            },
            r"ssl_pseudo_labeling\.extraction\.sample_rate=16000 is not the 8000 Hz the DINO "
            r"encoder takes .*set ssl_pseudo_labeling\.extraction\.sample_rate to 8000",
        ),
        # A traceback about fbank samples at DINO's first step, naming no setting.
        (
            {"dino": {"data": {"local_seconds": 0.01}}},
            r"ssl_pseudo_labeling\.dino\.data\.local_seconds=0\.01 gives 0 feature frame\(s\)",
        ),
        (
            {
                "dino": {
                    "model": {"encoder": XVECTOR},
                    "data": {"global_seconds": 0.1, "local_crops": 0},
                },
                "finetune": {"model": XVECTOR},
            },
            r"dino\.data\.global_seconds=0\.1 gives 8 feature frame\(s\) .*fewer than the 15 "
            r"the xvector encoder needs",
        ),
        # Round 1 loaded only the tensors whose shapes agreed and started the rest at random.
        (
            {"dino": {"model": {"encoder": {"ecapa": {"channels": 32}}}}},
            r"ssl_pseudo_labeling\.finetune\.model differs from "
            r"ssl_pseudo_labeling\.dino\.model\.encoder \(ecapa\.channels: 64 vs 32\), but "
            r"round 1 starts from the DINO encoder",
        ),
        (
            {"lmft": {"model": {"ecapa": {"embedding_dim": 128}}}},
            r"ssl_pseudo_labeling\.lmft\.model differs from ssl_pseudo_labeling\.finetune\.model "
            r"\(ecapa\.embedding_dim: 128 vs 64\), but LMFT starts from the last round's weights",
        ),
        ({"dino": {"training": None}}, r"ssl_pseudo_labeling\.dino\.training is required"),
        # Refused by the workers' augmenter, naming no key.
        (
            {"dino": {"data": {"augmentation": {"weights": {"reverbb": 1}}}}},
            r"ssl_pseudo_labeling\.dino\.data\.augmentation: unknown augmentation option\(s\) "
            r"\['reverbb'\]",
        ),
    ],
)
def test_dino_settings_are_refused_when_the_session_starts(
    base: dict[str, Any], changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_stage_settings(deep_merge(base, changes))


def test_settings_that_may_differ_from_the_dino_encoder_pass(base: dict[str, Any]) -> None:
    # Round 1 from its own initialisation: its model need not be DINO's encoder.
    other = {"model": {"ecapa": {"channels": 32}}, "init_from_previous": False}
    check_stage_settings(deep_merge(base, {"finetune": other}))
    # Training knobs that hold no weights: head dropout and the classifier of the rounds.
    knobs = {"model": {"head": {"dropout": 0.1}}}
    check_stage_settings(deep_merge(base, {"finetune": knobs, "lmft": knobs}))
    # No local crops: their length is not used, whatever it is.
    no_locals = {"local_crops": 0, "local_seconds": 0.001}
    check_stage_settings(deep_merge(base, {"dino": {"data": no_locals}}))


def test_a_params_override_stops_the_session_before_anything_runs(kedro_project: Path) -> None:
    bootstrap_project(kedro_project)
    params = {"ssl_pseudo_labeling": {"dino": {"model": {"head": {"n_prototypes": 0}}}}}
    with pytest.raises(ValueError, match=r"ssl_pseudo_labeling\.dino\.model\.head\.n_prototypes"):
        with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
            session.load_context()
