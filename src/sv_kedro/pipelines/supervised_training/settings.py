"""Checks of the supervised systems' settings: each node's own, and the session start's.

``resolve_model_config`` / ``resolve_training_config`` turn a system's ``model`` and
``training`` blocks into what the model factory and ``TrainConfig`` take (the ``--params``
conveniences of ``nodes``); ``check_system`` checks all of a system's blocks as its nodes
and training worker will use them, before any file is written or weight built.

Each system's nodes run ``check_system`` when they start, but ``kedro run --pipeline
supervised_training`` trains the systems one after another: a wrong value of the last one
(``wavlm_mhfa_sv.loss.name=ce``) would stop the run only after every other system has
trained. ``check_supervised_settings`` runs the same check for every system of the
configuration (no weights, no data) at session start and names the system in the error, as
``ssl_pseudo_labeling.settings.check_stage_settings`` does for the self-supervised rounds.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sv_kedro.losses.factory import build_loss
from sv_kedro.models.factory import normalize_model_config
from sv_kedro.models.pooling import pooling_options
from sv_kedro.models.ssl_encoder import ENCODER_DEFAULTS
from sv_kedro.systems.loaders import checked_loader_config
from sv_kedro.systems.tasks import build_task
from sv_kedro.systems.validation import VALIDATION_METRICS
from sv_kedro.training.config import TrainConfig
from sv_kedro.training.lr_finder import check_range_test_options
from sv_kedro.utils.params import as_bool, as_float, as_int, check_keys

log = logging.getLogger(__name__)

# The supervised systems, each a namespaced copy of the pipeline's template.
SYSTEMS: tuple[str, ...] = (
    "wav2vec2_sv_ce",
    "wav2vec2_sv_aam",
    "wav2vec2_sv_bce",
    "wav2vec2_sv_ctc",
    "xvector",
    "ecapa_tdnn",
    "wavlm_mhfa_sv",
)
SSL_ARCHITECTURES = ("ssl", "ssl_mhfa", "ssl_paired")
# The SSL encoder sits at ``model.frontend``: its parameters get the encoder LR.
ENCODER_PREFIX = "frontend."
RUN_KEYS = ("work_dir", "resume", "torch_threads", "validation_max_seconds", "gate", "l2sp_weight")
LR_FINDER_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "use_suggestion": False,
    "min_lr": 1e-6,
    "max_lr": 1.0,
    "num_steps": 60,
    "smoothing": 0.9,
    "divergence_factor": 4.0,
    "skip_start": 3,
}


# ---------------------------------------------------------------------------- configs
def resolve_model_config(model: Mapping[str, Any], where: str = "model") -> dict[str, Any]:
    """``model`` with encoder keys given at its top level moved into ``model.encoder``."""
    config = copy.deepcopy(dict(model))
    if config.get("architecture") not in SSL_ARCHITECTURES:
        normalize_model_config(config, where)  # fail here, naming the key, not in a worker
        return config
    hoisted = sorted(set(config) & (set(ENCODER_DEFAULTS) - {"kind"}))
    if hoisted:
        encoder = dict(config.get("encoder") or {})
        for key in hoisted:
            encoder[key] = config.pop(key)
        config["encoder"] = encoder
        log.info("%s: encoder setting(s) %s moved into %s.encoder", where, hoisted, where)
    normalized = normalize_model_config(config, where)
    if "pooling" in normalized:  # the pooling is built after the encoder: check it first
        options = {k: v for k, v in normalized["pooling"].items() if k != "name"}
        pooling_options(normalized["pooling"]["name"], options, f"{where}.pooling")
    return config


def resolve_training_config(training: Mapping[str, Any]) -> dict[str, Any]:
    """``training`` with a schedule name expanded and the encoder prefix of our models."""
    config = copy.deepcopy(dict(training))
    if isinstance(config.get("schedule"), str):
        config["schedule"] = {"kind": config["schedule"]}
    config.setdefault("encoder_prefix", ENCODER_PREFIX)
    checked = TrainConfig.from_dict(config)  # fail here, naming the key, not in a worker
    # Another name would fail only at the first validation, hours in.
    if checked.monitor not in VALIDATION_METRICS:
        raise ValueError(
            f"training.monitor must be one of {list(VALIDATION_METRICS)} (what validation "
            f"returns), got {checked.monitor!r}"
        )
    return config


def check_loss_fits_model(
    model: Mapping[str, Any], loss: Mapping[str, Any], data: Mapping[str, Any]
) -> None:
    """Refuse a loss that the model's output or the batches do not fit, naming the keys.

    The training worker builds each part on its own: a mismatch either trains something
    else without a word (``aam`` on a linear head clamps its logits to [-1, 1]; ``ce`` on a
    cosine head trains unscaled cosines, stuck near log(speakers)) or fails there with
    ``'NoneType' object has no attribute 'dim'`` or ``KeyError: 'labels'``. ``model`` is
    the configuration as given (``resolve_model_config``), ``loss`` and ``data`` blocks.
    """
    config = normalize_model_config(model, "model")
    architecture = config["architecture"]
    name = str(loss.get("name", "")).lower()  # build_loss names a missing or unknown one
    pairs = as_bool(data.get("pairs", False), "data.pairs")
    paired = architecture == "ssl_paired"
    if (name == "bce") != paired or (name == "bce") != pairs:
        raise ValueError(
            "loss.name bce, model.architecture ssl_paired and data.pairs true go together "
            f"(a pair of utterances, one same-speaker logit); got loss.name {name!r}, "
            f"model.architecture {architecture!r} and data.pairs {pairs}"
        )
    frame_level = architecture == "ssl" and config["pooling"]["name"] == "none"
    if (name == "ctc") != frame_level:
        raise ValueError(
            "loss.name ctc trains frame-level speaker logits, which only model.architecture "
            "ssl with model.pooling none gives (and pooling none feeds only ctc); got "
            f"loss.name {name!r}, model.architecture {architecture!r}"
            + (f" and model.pooling {config['pooling']['name']!r}" if "pooling" in config else "")
        )
    if frame_level:
        # The frame head (heads.FrameClassificationHead) reads only hidden_dims, activation
        # and dropout: another head setting would be ignored.
        head = dict(model.get("head") or {})
        ignored = {"classifier": "linear", "batch_norm": False, "embedding_layer": "pooled"}
        unused = sorted(key for key, value in ignored.items() if head.get(key, value) != value)
        if unused:
            raise ValueError(
                f"model.head: {unused} are not used by the frame-level (CTC) head, which "
                "reads only hidden_dims, activation and dropout; remove them"
            )
        return
    if "head" not in config or name not in ("ce", "aam"):
        return
    classifier = config["head"]["classifier"]
    wanted = {"ce": "linear", "aam": "cosine"}[name]
    if classifier != wanted:
        raise ValueError(
            f"loss.name {name!r} needs model.head.classifier {wanted!r}, got {classifier!r}: "
            + (
                "AAM adds its margin to cosines in [-1, 1] and would clamp a linear head's logits"
                if name == "aam"
                else "cross-entropy on unscaled cosines in [-1, 1] cannot become confident "
                "(loss.name aam with margin 0 is the scaled-cosine softmax)"
            )
        )


def check_system(
    model: Mapping[str, Any],
    loss: Mapping[str, Any],
    training: Mapping[str, Any],
    data: Mapping[str, Any],
    run: Mapping[str, Any],
    lr_finder: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check one system's blocks as its nodes and training worker will use them, before any
    file is written or weight built; return the resolved ``(model, training)`` configs.

    Each error names its key relative to the system (``loss.scale``, ``training.lr``).
    """
    _check_run(run)
    if lr_finder is not None:
        lr_finder_options(lr_finder)
    model_config = resolve_model_config(model)
    training_config = resolve_training_config(training)
    try:
        build_loss(loss)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"loss: {_message(exc)}") from exc
    # The gate and the L2-SP weight, as the training worker's task takes them from ``run``.
    gate = {"gate": run.get("gate") or {}, "l2sp_weight": run.get("l2sp_weight", 0.0)}
    try:
        build_task({"loss": dict(loss), **gate})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"run: {_message(exc)}") from exc
    checked_loader_config(data)
    check_loss_fits_model(model_config, loss, data)
    return model_config, training_config


def _check_run(run: Mapping[str, Any]) -> None:
    unknown = sorted(set(run) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"run: unknown key(s) {unknown}; allowed: {list(RUN_KEYS)}")
    if not run.get("work_dir"):
        raise ValueError("run.work_dir is required (where checkpoints and inputs go)")
    as_bool(run.get("resume", True), "run.resume")
    if (
        run.get("torch_threads") is not None
        and as_int(run["torch_threads"], "run.torch_threads") < 1
    ):
        raise ValueError(f"run.torch_threads must be >= 1, got {run['torch_threads']!r}")
    seconds = run.get("validation_max_seconds")
    if seconds is not None and as_float(seconds, "run.validation_max_seconds") <= 0:
        raise ValueError(f"run.validation_max_seconds must be > 0, got {seconds!r}")


def _message(exc: Exception) -> str:
    """An exception's text; a KeyError's own ``str`` adds quotes around it."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def lr_finder_options(lr_finder: Mapping[str, Any]) -> dict[str, Any]:
    """``lr_finder`` over its defaults, each value of its default's kind and range (naming
    the key), checked whether or not the test is enabled."""
    check_keys(lr_finder, LR_FINDER_DEFAULTS, "lr_finder")
    options = {**LR_FINDER_DEFAULTS, **lr_finder}
    for key, default in LR_FINDER_DEFAULTS.items():
        value, where = options[key], f"lr_finder.{key}"
        if isinstance(default, bool):
            as_bool(value, where)
        elif isinstance(default, int):
            options[key] = as_int(value, where)
        else:
            options[key] = as_float(value, where)
    if options["use_suggestion"] and not options["enabled"]:
        # Training would go on with training.lr as if nothing had been asked.
        raise ValueError(
            "lr_finder.use_suggestion is true but lr_finder.enabled is false: there is no "
            "suggestion to use; enable the LR range test or set use_suggestion false"
        )
    check_range_test_options(
        options["min_lr"],
        options["max_lr"],
        options["num_steps"],
        options["smoothing"],
        options["divergence_factor"],
        options["skip_start"],
    )
    return options


def check_supervised_settings(
    parameters: Mapping[str, Any], systems: Iterable[str] = SYSTEMS
) -> None:
    """Refuse (``ValueError`` naming ``<system>.<block>.<key>``) settings that a system's
    nodes or training worker would refuse; systems absent from ``parameters`` are skipped."""
    for system in systems:
        section = parameters.get(system)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ValueError(f"{system} must be a mapping of blocks, got {section!r}")
        blocks = {}
        for block in ("model", "loss", "training", "data", "run", "lr_finder"):
            value = section.get(block)
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{system}.{block} must be a mapping, got {value!r}")
            blocks[block] = value or {}
        try:
            check_system(**blocks)
        except (ValueError, TypeError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ValueError(f"{system}.{message}") from exc
