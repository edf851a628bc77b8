"""ssl_pseudo_labeling: label-free speaker verification, from raw audio to an LMFT model.

Stages (datasets live under the ``ssl_pseudo_labeling`` namespace; kedro-viz shows each
round as its own modular pipeline):

0. initial embeddings: DINO on the unlabeled training audio (``dino``: encoder checkpoint,
   evaluated like any system) or, in ``ssl_pseudo_labeling_external``, a published ``.pt``
   file (``external_embeddings``) -> ``initial_embeddings`` (validated);
1. ``initial``: k-means + AHC -> pseudo-labels, health report (NMI, purity, sizes);
2-3. ``iter_1`` ... ``iter_N``: fine-tune on the previous pseudo-labels (AAM, loss gate, LC,
   L2-SP), embed the training set, re-cluster;
4. ``lmft``: large-margin fine-tuning from the last round, then its clustering report;
5. each stage's checkpoint goes through the evaluation template (``ssl_pseudo_labeling.<stage>``)
   and ``ssl_summary`` tracks NMI and EER/minDCF from stage 0 to LMFT.

The number of rounds is the parameter ``ssl_pseudo_labeling.n_iterations``
(``--params ssl_pseudo_labeling.n_iterations=3``). Kedro builds pipelines before nodes see
parameters, so :class:`sv_kedro.hooks.PipelineShapeHook` reads it from the session's
configuration (environment and ``--params`` included) and rebuilds the pipelines with that
many rounds before the run starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from sv_kedro.pipelines import evaluation
from sv_kedro.pipelines.ssl_pseudo_labeling import nodes
from sv_kedro.pipelines.ssl_pseudo_labeling.settings import check_stage_settings
from sv_kedro.utils.params import check_keys

NAMESPACE = "ssl_pseudo_labeling"
DEFAULT_ITERATIONS = 2
INITIAL_SOURCES = ("dino", "external")
PARAMS = f"params:{NAMESPACE}"
_configured_iterations: int | None = None


# The keys each part of the ``ssl_pseudo_labeling`` section may hold; the nested sections
# (model, loss, training, data, gate, clustering, extraction, task, ...) are checked by the
# code that reads them.
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    NAMESPACE: ("n_iterations", "run", "dino", "extraction", "clustering", "finetune", "lmft"),
    f"{NAMESPACE}.run": ("work_dir", "resume", "torch_threads", "distributed"),
    f"{NAMESPACE}.dino": ("export", "model", "task", "training", "data"),
    f"{NAMESPACE}.finetune": (
        "init_from_previous",
        "classifier_start",
        "round_start",
        "model",
        "loss",
        "l2sp_weight",
        "gate",
        "training",
        "data",
    ),
}
SECTION_KEYS[f"{NAMESPACE}.lmft"] = SECTION_KEYS[f"{NAMESPACE}.finetune"]
DINO_EXPORTS = ("teacher", "student")


def check_section(section: Mapping[str, Any], rounds_start_from_dino: bool = True) -> None:
    """Refuse unknown keys in ``ssl_pseudo_labeling`` and in its run / dino / finetune /
    lmft parts, a ``dino.export`` that is neither network, and settings the rounds or LMFT
    would refuse, before anything runs (the nodes read these parts with ``.get``, so a
    misspelt key would be ignored, and the rounds run late). ``rounds_start_from_dino``:
    see :func:`.settings.check_stage_settings`."""
    check_keys(section, SECTION_KEYS[NAMESPACE], NAMESPACE)
    for part in ("run", "dino", "finetune", "lmft"):
        values = section.get(part)
        if values is not None and not isinstance(values, Mapping):
            raise ValueError(f"{NAMESPACE}.{part} must be a mapping, got {values!r}")
        check_keys(values or {}, SECTION_KEYS[f"{NAMESPACE}.{part}"], f"{NAMESPACE}.{part}")
    export = (section.get("dino") or {}).get("export", "teacher")
    if export not in DINO_EXPORTS:
        raise ValueError(f"{NAMESPACE}.dino.export must be one of {DINO_EXPORTS}, got {export!r}")
    check_stage_settings(section, rounds_start_from_dino)


def check_iterations(value: object) -> int:
    """``value`` as a number of rounds (an integer >= 1), or a ValueError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{NAMESPACE}.n_iterations must be an integer >= 1, got {value!r}")
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{NAMESPACE}.n_iterations must be an integer, got {value!r}") from None
    if count < 1:
        raise ValueError(f"{NAMESPACE}.n_iterations must be >= 1, got {count}")
    return count


def configure_iterations(value: object) -> bool:
    """Build later pipelines with ``value`` rounds; True when that changes the count."""
    global _configured_iterations  # noqa: PLW0603 - pipelines are module-level in Kedro too
    count = check_iterations(value)
    changed = count != n_iterations()
    _configured_iterations = count
    return changed


def n_iterations() -> int:
    """Rounds of pseudo-labelling + fine-tuning the pipelines are built with."""
    return DEFAULT_ITERATIONS if _configured_iterations is None else _configured_iterations


def stage_names(iterations: int | None = None) -> list[str]:
    """``["iter_1", ..., "iter_N", "lmft"]``."""
    count = n_iterations() if iterations is None else iterations
    return [f"iter_{i}" for i in range(1, count + 1)] + ["lmft"]


def evaluated_systems(initial_source: str = "dino", iterations: int | None = None) -> list[str]:
    """The namespaces whose checkpoints are evaluated (for the global comparison)."""
    stages = ([f"{NAMESPACE}.dino"] if initial_source == "dino" else []) + [
        f"{NAMESPACE}.{stage}" for stage in stage_names(iterations)
    ]
    return stages


def cohort_manifests(initial_source: str = "dino", iterations: int | None = None) -> dict[str, str]:
    """Evaluated system -> the training manifest labelled with that stage's pseudo-labels.

    AS-norm cohorts and LDA/PLDA of a self-supervised stage group the training utterances by
    these pseudo-labels, never by the true speakers. DINO's are those of ``initial``.
    """
    cohorts = {}
    for system in evaluated_systems(initial_source, iterations):
        stage = system.removeprefix(f"{NAMESPACE}.")
        stage = "initial" if stage == "dino" else stage
        cohorts[system] = f"{NAMESPACE}.{stage}.cohort_manifest"
    return cohorts


def _cluster_and_label() -> list[Any]:
    """Pseudo-labels (+ health report) from ``train_embeddings``, and the cohort manifest
    labelled with them."""
    return [
        node(
            nodes.cluster_training_embeddings,
            inputs=["train_embeddings", "train_manifest", f"{PARAMS}.clustering"],
            outputs=["pseudo_labels", "cluster_health", "cluster_sizes_plot"],
            name="cluster_training_embeddings",
        ),
        node(
            nodes.pseudo_labeled_manifest,
            inputs=["train_manifest", "pseudo_labels"],
            outputs="cohort_manifest",
            name="label_cohort_with_pseudo_labels",
        ),
    ]


def _named(function: Callable[..., Any], name: str, **bound: Any) -> Callable[..., Any]:
    partial = functools.partial(function, **bound)
    functools.update_wrapper(partial, function)
    partial.__name__ = name  # type: ignore[attr-defined]
    return partial


def _embed_and_cluster() -> list[Any]:
    return [
        node(
            nodes.embed_training_utterances,
            inputs=["checkpoint", "train_manifest", f"{PARAMS}.extraction", f"{PARAMS}.run"],
            outputs="train_embeddings",
            name="embed_training_utterances",
        ),
        *_cluster_and_label(),
    ]


def round_template(
    stage: str, first_from_scratch: bool = False, reads_initial: bool = False
) -> Pipeline:
    """One round (``iter_k``) or LMFT: train on ``previous_pseudo_labels`` from
    ``previous_checkpoint`` (its classifier restarted, fresh or at the prototypes of the
    labels in ``previous_train_embeddings``), embed the training set, re-cluster.

    ``reads_initial``: the round also reads ``initial_checkpoint``, its start under
    ``finetune.round_start: initial``."""
    outputs = ["checkpoint", "training_metrics", "gate_plot"]
    if stage == "lmft":
        train = node(
            nodes.large_margin_fine_tune,
            inputs=[
                "previous_pseudo_labels",
                "previous_train_embeddings",
                "train_manifest",
                "previous_checkpoint",
                f"{PARAMS}.finetune",
                f"{PARAMS}.lmft",
                f"{PARAMS}.run",
            ],
            outputs=outputs,
            name="large_margin_fine_tune",
        )
    elif first_from_scratch:
        train = node(
            nodes.fine_tune_first_round_from_scratch,
            inputs=[
                "previous_pseudo_labels",
                "train_manifest",
                f"{PARAMS}.finetune",
                f"{PARAMS}.run",
            ],
            outputs=outputs,
            name="fine_tune_on_pseudo_labels",
        )
    else:
        inputs = {
            "pseudo_labels": "previous_pseudo_labels",
            "previous_embeddings": "previous_train_embeddings",
            "train_manifest": "train_manifest",
            "previous_checkpoint": "previous_checkpoint",
            "finetune": f"{PARAMS}.finetune",
            "run": f"{PARAMS}.run",
        }
        if reads_initial:
            inputs["initial_checkpoint"] = "initial_checkpoint"
        train = node(
            _named(nodes.fine_tune_round, "fine_tune_round", stage=stage),
            inputs=inputs,
            outputs=outputs,
            name="fine_tune_on_pseudo_labels",
        )
    return Pipeline([train, *_embed_and_cluster()])


def _stage_zero(initial_source: str) -> Pipeline:
    """Nodes that produce ``ssl_pseudo_labeling.initial_embeddings``."""
    if initial_source == "external":
        nodes_ = [
            node(
                nodes.check_external_embeddings,
                inputs=["external_embeddings", "train_manifest"],
                outputs="initial_embeddings",
                name="check_external_embeddings",
            )
        ]
    else:
        nodes_ = [
            node(
                nodes.train_dino_encoder,
                inputs=["train_manifest", f"{PARAMS}.dino", f"{PARAMS}.run"],
                outputs=["dino.checkpoint", "dino.training_metrics"],
                name="train_dino_encoder",
            ),
            node(
                nodes.embed_training_utterances,
                inputs=[
                    "dino.checkpoint",
                    "train_manifest",
                    f"{PARAMS}.extraction",
                    f"{PARAMS}.run",
                ],
                outputs="initial_embeddings",
                name="embed_training_utterances_with_dino",
            ),
        ]
    return pipeline(
        Pipeline(nodes_),
        namespace=NAMESPACE,
        inputs={"train_manifest"},
        parameters={p for n in nodes_ for p in n.inputs if p.startswith("params:")},
    )


def create_pipeline(
    initial_source: str = "dino", iterations: int | None = None, evaluate: bool = True
) -> Pipeline:
    """The whole self-supervised pipeline (see the module docstring).

    ``initial_source``: ``dino`` (train it) or ``external`` (the ``.pt`` file of
    ``ssl_pseudo_labeling.external_embeddings``); ``iterations``: rounds before LMFT
    (``None``: :func:`n_iterations`); ``evaluate``: add each stage's evaluation and
    ``ssl_summary``.
    """
    if initial_source not in INITIAL_SOURCES:
        raise ValueError(f"initial_source must be one of {INITIAL_SOURCES}, got {initial_source!r}")
    stages = stage_names(iterations)
    parts = [_stage_zero(initial_source)]
    parts.append(
        pipeline(
            Pipeline(_cluster_and_label()),
            namespace=f"{NAMESPACE}.initial",
            inputs={
                "train_embeddings": f"{NAMESPACE}.initial_embeddings",
                "train_manifest": "train_manifest",
            },
            parameters={f"{PARAMS}.clustering"},
        )
    )
    previous = f"{NAMESPACE}.initial"
    for position, stage in enumerate(stages):
        scratch = position == 0 and initial_source == "external"
        inputs = {
            "previous_pseudo_labels": f"{previous}.pseudo_labels",
            "train_manifest": "train_manifest",
        }
        if not scratch:
            inputs["previous_checkpoint"] = (
                f"{NAMESPACE}.dino.checkpoint" if position == 0 else f"{previous}.checkpoint"
            )
            inputs["previous_train_embeddings"] = (
                f"{NAMESPACE}.initial_embeddings"
                if position == 0
                else f"{previous}.train_embeddings"
            )
        reads_initial = initial_source == "dino" and position > 0 and stage != "lmft"
        if reads_initial:
            inputs["initial_checkpoint"] = f"{NAMESPACE}.dino.checkpoint"
        parts.append(
            pipeline(
                round_template(stage, first_from_scratch=scratch, reads_initial=reads_initial),
                namespace=f"{NAMESPACE}.{stage}",
                inputs=inputs,
                parameters={
                    f"{PARAMS}.{name}" for name in ("finetune", "run", "extraction", "clustering")
                }
                | ({f"{PARAMS}.lmft"} if stage == "lmft" else set()),
            )
        )
        previous = f"{NAMESPACE}.{stage}"
    result = sum(parts, Pipeline([]))
    if not evaluate:
        return result
    systems = evaluated_systems(initial_source, len(stages) - 1)
    summary_inputs: dict[str, str] = {"scoring": "params:evaluation.scoring"}
    summary_inputs["initial__health"] = "initial.cluster_health"
    if initial_source == "dino":
        summary_inputs["initial__metrics"] = "dino.metrics"
    for stage in stages:
        summary_inputs[f"{stage}__health"] = f"{stage}.cluster_health"
        summary_inputs[f"{stage}__metrics"] = f"{stage}.metrics"
    summary = pipeline(
        Pipeline(
            [
                node(
                    nodes.summarize_stages,
                    inputs=summary_inputs,
                    outputs=["ssl_summary", "ssl_summary_markdown"],
                    name="summarize_stages",
                )
            ]
        ),
        namespace=NAMESPACE,
        outputs={"ssl_summary", "ssl_summary_markdown"},
        parameters={"params:evaluation.scoring"},
    )
    evaluations = evaluation.create_pipeline(
        systems,
        comparison="ssl_comparison",
        cohorts=cohort_manifests(initial_source, len(stages) - 1),
    )
    return result + evaluations + summary
