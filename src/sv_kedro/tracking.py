"""MLflow experiment tracking through kedro-mlflow, switched on per environment.

kedro-mlflow registers its hook for every run as soon as it is installed, which would
start an MLflow run (and create a tracking database) on every ``kedro run``. The project
disables that plugin hook (``DISABLE_HOOKS_FOR_PLUGINS`` in ``settings.py``) and registers
:class:`SpeakerVerificationMlflowHook` instead: kedro-mlflow's own hook, active only when
the run's configuration has an ``mlflow.yml`` (``conf/mlflow/``, i.e. ``kedro run --env
mlflow``; or one a user puts in ``conf/local/``). On top of what kedro-mlflow logs (every
node's parameters, run tags), it logs what this project's runs produce:

- per-step training metrics: any saved DataFrame with a ``step`` column, one MLflow metric
  history per numeric column, keyed ``<namespace>.<column>`` (e.g. ``ecapa_tdnn.loss``);
- final verification metrics: dicts saved to ``*metrics`` datasets, nested
  ``{trial_set: {backend: {eer, min_dcf_0.01, ...}}}``, flattened to
  ``<system>.<trial_set>.<backend>.<metric>``, plus the headline ``<system>.eer`` and
  ``<system>.min_dcf_0.01`` / ``_0.05`` (trial set ``test``, the main back-end);
- clustering health per self-supervised round (``*cluster_health``: NMI, purity, ...) as
  ``<round>.<statistic>``;
- artifacts: every saved matplotlib figure (``plots/<dataset>.png``: DET curves, score
  histograms, gate thresholds, LR finder), comparison tables and summaries
  (``tables/<dataset>.csv``) and markdown reports (``reports/<dataset>.md``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
from kedro.config import MissingConfigException
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node

if TYPE_CHECKING:
    from mlflow.entities import Metric

logger = logging.getLogger(__name__)

MLFLOW_CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]
HEADLINE_METRICS = ("eer", "min_dcf_0.01", "min_dcf_0.05")
MAIN_TRIAL_SET = "test"
# MLflow's log_batch accepts at most 1000 metrics per call.
_BATCH = 1000


def has_mlflow_config(context: KedroContext) -> bool:
    """Whether the context's environment (or base) has an ``mlflow.yml`` with content."""
    loader = context.config_loader
    if "mlflow" not in loader.config_patterns:
        loader.config_patterns.update({"mlflow": MLFLOW_CONFIG_PATTERNS})
    try:
        return bool(loader["mlflow"])
    except MissingConfigException:
        return False


def training_metric_history(frame: pd.DataFrame, prefix: str) -> list[Metric]:
    """One ``Metric`` per (row, numeric column) of a table with a ``step`` column.

    Empty cells (a column logged only every few steps, e.g. validation EER) are skipped.
    """
    from mlflow.entities import Metric

    if "step" not in frame.columns:
        raise ValueError(f"{prefix}: a training-metrics table needs a 'step' column")
    timestamp = int(time.time() * 1000)
    metrics = []
    numeric = [
        column
        for column in frame.columns
        if column != "step"
        and pd.api.types.is_numeric_dtype(frame[column])
        and not pd.api.types.is_bool_dtype(frame[column])
    ]
    steps = frame["step"].to_numpy()
    for column in numeric:
        values = frame[column].to_numpy(dtype=float)
        key = metric_key(prefix, str(column))
        for step, value in zip(steps, values, strict=True):
            if math.isfinite(value):
                metrics.append(Metric(key, float(value), timestamp, int(step)))
    return metrics


def flatten_numbers(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(dotted.key, value)`` for every finite number in a nested dict (bools skipped)."""
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flatten_numbers(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                yield name, float(value)


def verification_metrics_to_log(
    metrics: Mapping[str, Any], system: str, main_backend: str
) -> dict[str, float]:
    """Flattened ``{system}.{trial_set}.{backend}.{metric}`` values plus the headline
    ``{system}.{eer|min_dcf_*}`` of the main trial set and back-end."""
    logged = {metric_key(system, key): value for key, value in flatten_numbers(metrics)}
    main = metrics.get(MAIN_TRIAL_SET, {}).get(main_backend, {})
    for name in HEADLINE_METRICS:
        value = main.get(name) if isinstance(main, Mapping) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            logged[metric_key(system, name)] = float(value)
    return logged


def metric_key(prefix: str, name: str) -> str:
    """``prefix.name`` with characters MLflow refuses in keys replaced by ``_``."""
    key = f"{prefix}.{name}" if prefix else name
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


def _namespace(dataset_name: str) -> str:
    """``ecapa_tdnn.training_metrics`` -> ``ecapa_tdnn``; no namespace -> ``""``."""
    return dataset_name.rsplit(".", 1)[0] if "." in dataset_name else ""


class SpeakerVerificationMlflowHook:
    """kedro-mlflow's hook, on only where an ``mlflow.yml`` is configured, plus the
    logging of training curves, verification metrics, tables and plots (module doc)."""

    def __init__(self) -> None:
        self.tracking_on = False
        self.main_backend = "fusion"
        self._mlflow_hook: Any = None

    # -- kedro-mlflow's hooks, gated ------------------------------------------------

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self.tracking_on = has_mlflow_config(context)
        if not self.tracking_on:
            return
        from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

        scoring = (context.params.get("evaluation") or {}).get("scoring") or {}
        self.main_backend = str(scoring.get("main_backend", "fusion"))
        # A fresh kedro-mlflow hook per session: it keeps the run id of its session.
        self._mlflow_hook = MlflowHook()
        self._mlflow_hook.after_context_created(context)

    @hook_impl
    def after_catalog_created(
        self,
        catalog: Any,
        conf_catalog: dict[str, Any],
        conf_creds: dict[str, Any],
        parameters: dict[str, Any],
        save_version: str,
        load_versions: dict[str, str],
    ) -> None:
        if self.tracking_on:
            self._mlflow_hook.after_catalog_created(
                catalog, conf_catalog, conf_creds, parameters, save_version, load_versions
            )

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if self.tracking_on:
            self._mlflow_hook.before_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: Any, inputs: dict[str, Any], is_async: bool
    ) -> None:
        if self.tracking_on:
            self._mlflow_hook.before_node_run(node, catalog, inputs, is_async)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if self.tracking_on:
            self._mlflow_hook.after_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def on_pipeline_error(
        self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any
    ) -> None:
        if self.tracking_on:
            self._mlflow_hook.on_pipeline_error(error, run_params, pipeline, catalog)

    @property
    def run_id(self) -> str | None:
        """The MLflow run of the current session's pipeline run (None: not tracking)."""
        hook = self._mlflow_hook
        if not self.tracking_on or hook is None or not hook._is_mlflow_enabled:
            return None
        return hook.run_id

    # -- this project's outputs -----------------------------------------------------

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        run_id = self.run_id
        if run_id is None:
            return
        import mlflow
        from matplotlib.figure import Figure
        from mlflow.entities import Metric

        client = mlflow.MlflowClient()
        if isinstance(data, Figure):
            client.log_figure(run_id, data, f"plots/{dataset_name}.png")
        elif isinstance(data, pd.DataFrame) and "step" in data.columns:
            history = training_metric_history(data, _namespace(dataset_name))
            for start in range(0, len(history), _BATCH):
                client.log_batch(run_id, metrics=history[start : start + _BATCH])
        elif isinstance(data, pd.DataFrame) and dataset_name.endswith(("_table", "_summary")):
            client.log_text(run_id, data.to_csv(index=False), f"tables/{dataset_name}.csv")
        elif isinstance(data, str) and dataset_name.endswith("_markdown"):
            client.log_text(run_id, data, f"reports/{dataset_name}.md")
        elif isinstance(data, Mapping) and dataset_name.endswith(("metrics", "cluster_health")):
            values = verification_metrics_to_log(
                data, _namespace(dataset_name) or dataset_name, self.main_backend
            )
            timestamp = int(time.time() * 1000)
            metrics = [Metric(k, v, timestamp, 0) for k, v in values.items()]
            for start in range(0, len(metrics), _BATCH):
                client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
