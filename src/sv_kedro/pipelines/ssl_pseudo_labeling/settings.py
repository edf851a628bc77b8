"""Up-front checks of DINO's, the clustering's, the fine-tuning rounds' and LMFT's settings.

Each part reads its settings only when its node runs: DINO's in its training workers, the
others after DINO and extraction. A wrong value there (``dino.task.teacher_temperature=0``,
``lmft.training.lr=-1``, ``clustering.k1=abc``) would fail minutes to hours into a run, and
some would not fail at all. ``check_stage_settings`` builds each part's checked form (no
weights, no data) when the session starts, through the same code the nodes use, and names
the part in the error. A fixed ``clustering.k2`` is also checked against each round's
``data.batch_size`` (its batches hold that many distinct pseudo-speakers); with ``k2: auto``
the round checks the count it gets. Settings of different parts that must agree are
compared too (see :mod:`.dino_settings`): DINO's crops, audio rate and encoder against the
extraction and the rounds that use them, and LMFT's model against the rounds'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sv_kedro.clustering.settings import check_speakers_fill_a_batch, checked_clustering
from sv_kedro.models.factory import normalize_model_config
from sv_kedro.pipelines.ssl_pseudo_labeling.dino_settings import (
    check_dino_settings,
    check_round_one_fits_dino,
    check_same_model,
)
from sv_kedro.pipelines.ssl_pseudo_labeling.nodes import (
    CLASSIFIER_STARTS,
    ROUND_STARTS,
    architecture_sections,
    deep_merge,
)
from sv_kedro.systems.loaders import checked_loader_config
from sv_kedro.systems.tasks import build_task
from sv_kedro.training.config import TrainConfig
from sv_kedro.utils.params import as_bool

NAMESPACE = "ssl_pseudo_labeling"


def check_stage_settings(section: Mapping[str, Any], rounds_start_from_dino: bool = True) -> None:
    """Refuse (``ValueError`` naming ``ssl_pseudo_labeling.<part>``) DINO, clustering, round
    or LMFT settings that their node would refuse or that disagree with each other; LMFT is
    checked as it runs, i.e. ``finetune`` with ``lmft``'s overrides.

    ``rounds_start_from_dino``: also compare the rounds' model with the DINO encoder
    (:func:`check_rounds_fit_dino`). Only a pipeline whose rounds load the DINO checkpoint
    needs it: ``ssl_pseudo_labeling_external`` has none and trains round 1 from scratch.
    """
    dino_encoder = check_dino_settings(section)
    k2: int | str | None = None
    if section.get("clustering") is not None:  # absent: the key check names it
        k2 = checked_clustering(section["clustering"], f"{NAMESPACE}.clustering").k2
    finetune = section.get("finetune")
    if not isinstance(finetune, Mapping):
        return  # absent: the key check names it; nothing to build here
    stages = {f"{NAMESPACE}.finetune": (f"{NAMESPACE}.finetune", finetune)}
    lmft = section.get("lmft")
    if isinstance(lmft, Mapping):
        merged = deep_merge(finetune, lmft)
        stages[f"{NAMESPACE}.lmft"] = (f"{NAMESPACE}.lmft (finetune with lmft's overrides)", merged)
    for key, (where, config) in stages.items():
        _check_stage(where, config)
        if key.endswith(".lmft") and "model" in finetune:
            # LMFT starts from the last round's weights; a model it changes (sizes, encoder)
            # would load only the tensors whose shapes agree and start the rest at random.
            check_same_model(
                config["model"],
                f"{NAMESPACE}.lmft.model",
                finetune["model"],
                f"{NAMESPACE}.finetune.model",
                "LMFT starts from the last round's weights",
                "make ssl_pseudo_labeling.lmft.model leave the model's sizes and encoder as "
                "the rounds have them",
            )
        if isinstance(k2, int):
            check_speakers_fill_a_batch(
                k2,
                config.get("data") or {},
                f"{key}.data.batch_size",
                f"{NAMESPACE}.clustering.k2={k2}",
            )
    if rounds_start_from_dino and dino_encoder is not None:
        check_round_one_fits_dino(dino_encoder, finetune)


def check_rounds_fit_dino(section: Mapping[str, Any]) -> None:
    """Refuse a rounds' model that the DINO encoder's weights do not fit (checked where the
    pipeline to run has rounds that start from the DINO checkpoint)."""
    encoder = check_dino_settings(section)
    if encoder is not None:
        check_round_one_fits_dino(encoder, section.get("finetune") or {})


def _check_stage(where: str, config: Mapping[str, Any]) -> None:
    checks: list[Callable[[], object]] = [
        lambda: _one_of(config, "classifier_start", CLASSIFIER_STARTS),
        lambda: _one_of(config, "round_start", ROUND_STARTS),
        lambda: as_bool(config.get("init_from_previous", True), "init_from_previous"),
    ]
    if "model" in config:
        checks.append(
            lambda: normalize_model_config(architecture_sections(config["model"]), "model")
        )
    if "training" in config:
        checks.append(lambda: TrainConfig.from_dict(config["training"]))
    if "loss" in config:  # the loss, the gate and l2sp_weight, as the round's task takes them
        task = {
            "loss": config["loss"],
            "gate": config.get("gate") or {},
            "l2sp_weight": config.get("l2sp_weight", 0.0),
        }
        checks.append(lambda: build_task(task))
    if config.get("data"):
        checks.append(lambda: checked_loader_config(config["data"]))
    for check in checks:
        try:
            check()
        except (ValueError, TypeError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ValueError(f"{where}: {message}") from exc


def _one_of(config: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    value = config.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
