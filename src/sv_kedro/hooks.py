"""Hooks that check the session's ``--params`` and shape the pipelines from its parameters.

:class:`ParameterCheckHook` refuses a ``--params`` key that the configuration lacks but
nearly has (``ssl_pseudo_labeling.n_iteration``): a misspelt override would otherwise set a
key no node reads, and the run would go ahead with the value it meant to change. It then
checks the ``ssl_pseudo_labeling`` section, whose nodes each read only a part, and every
supervised system's settings (``supervised_training.settings``).

Kedro registers pipelines from code, before any node sees a parameter; the number of
self-supervised rounds (``ssl_pseudo_labeling.n_iterations``) decides how many namespaced
``iter_N`` pipelines exist, so it must be known when the pipelines are built.
:class:`PipelineShapeHook` reads it from the session's configuration (base, the ``--env``
environment and ``--params``) as soon as the context exists, and makes Kedro rebuild its
pipelines when the count differs from the one they were built with.

:class:`MissingInputsHook` checks, before a pipeline runs, that the datasets it reads but
does not write exist, and names the pipeline that writes each missing one: running
``evaluation`` before anything was trained says which pipelines to run first, instead of
failing at the first node with a bare "Failed while loading data".
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import click
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines
from kedro.pipeline import Pipeline

from sv_kedro.pipelines import ssl_pseudo_labeling
from sv_kedro.pipelines.ssl_pseudo_labeling.pipeline import (
    DEFAULT_ITERATIONS,
    NAMESPACE,
    check_section,
)
from sv_kedro.pipelines.ssl_pseudo_labeling.settings import check_rounds_fit_dino
from sv_kedro.pipelines.supervised_training.settings import check_supervised_settings
from sv_kedro.utils.params import misspelt_keys

log = logging.getLogger(__name__)


_PARAMETERS_ATTRIBUTE = "_sv_kedro_parameters"


def _session_parameters(context: KedroContext) -> dict[str, Any]:
    """``context.config_loader["parameters"]`` (base, ``--env`` and ``--params`` merged),
    read once per context: both hooks below need it before any node runs, and each read
    of the configuration takes a noticeable fraction of a second. Callers must not change
    it. Kedro's own ``context.params`` is not used: it would build (and validate) the
    pipelines before :class:`PipelineShapeHook` has set their shape."""
    parameters = getattr(context, _PARAMETERS_ATTRIBUTE, None)
    if parameters is None:
        parameters = context.config_loader["parameters"]
        setattr(context, _PARAMETERS_ATTRIBUTE, parameters)
    return parameters


def _forget_built_pipelines() -> None:
    # Kedro caches the built pipelines per requested set and drops the cache when that set
    # changes: change it and put it back, so the next access calls register_pipelines again.
    requested = getattr(pipelines, "_requested_pipelines", None)
    pipelines.set_requested(["__rebuild__"])
    pipelines.set_requested(requested)


class ParamsError(click.ClickException, ValueError):
    """A parameter (a ``--params`` override or a configured value) that cannot be what was
    meant. A ``ClickException``: ``kedro run`` prints its message, not a traceback of some
    150 lines that buries it."""


class ParameterCheckHook:
    """Refuses ``--params`` keys that resemble a configured key but are not one, then
    checks the ``ssl_pseudo_labeling`` section's keys (one hook, so that a typo is always
    reported with the key it resembles, whatever order pluggy calls hooks in). Each
    supervised system's blocks are checked too, so that a wrong value of the last system
    does not wait for the others to train."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        loader = context.config_loader
        overrides = dict(getattr(loader, "runtime_params", None) or {})
        if overrides:
            # The configuration without the overrides: the same loader, runtime_params emptied.
            configured = copy.copy(loader)
            configured.runtime_params = {}
            typos = misspelt_keys(overrides, configured["parameters"])
            if typos:
                listed = "; ".join(f"{given} (did you mean {meant}?)" for given, meant in typos)
                raise ParamsError(
                    f"--params: key(s) not in the {loader.env or 'base'} configuration: {listed}"
                )
        parameters = _session_parameters(context)
        section = parameters.get(NAMESPACE)
        self._section = section if isinstance(section, Mapping) else None
        try:
            if self._section is not None:
                # Whether the rounds start from DINO depends on the pipeline: see below.
                check_section(self._section, rounds_start_from_dino=False)
            check_supervised_settings(parameters)
        except ValueError as exc:
            raise ParamsError(str(exc)) from exc

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog) -> None:
        """Where a round of the pipeline to run starts from the DINO checkpoint, its model
        must be the DINO encoder (``ssl_pseudo_labeling_external`` has no DINO)."""
        section = getattr(self, "_section", None)
        if section is None or not rounds_start_from_dino(pipeline):
            return
        try:
            check_rounds_fit_dino(section)
        except ValueError as exc:
            raise ParamsError(str(exc)) from exc


def rounds_start_from_dino(pipeline: Pipeline) -> bool:
    """Whether a fine-tuning round of ``pipeline`` loads the DINO encoder's checkpoint."""
    dino = f"{NAMESPACE}.dino.checkpoint"
    return any(
        node.name.endswith(".fine_tune_on_pseudo_labels") and dino in node.inputs
        for node in pipeline.nodes
    )


class PipelineShapeHook:
    """Builds ``ssl_pseudo_labeling`` with ``ssl_pseudo_labeling.n_iterations`` rounds."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        section = _session_parameters(context).get(NAMESPACE) or {}
        rounds = DEFAULT_ITERATIONS
        if isinstance(section, Mapping):
            rounds = section.get("n_iterations", DEFAULT_ITERATIONS)
        try:
            changed = ssl_pseudo_labeling.configure_iterations(rounds)
        except ValueError as exc:
            raise ParamsError(str(exc)) from exc
        if changed:
            log.info(
                "ssl_pseudo_labeling: building %d rounds (ssl_pseudo_labeling.n_iterations)",
                ssl_pseudo_labeling.n_iterations(),
            )
            _forget_built_pipelines()


class MissingInputsError(click.ClickException, RuntimeError):
    """A pipeline's free inputs do not exist yet."""


class MissingInputsHook:
    """Refuses to start a pipeline whose stored inputs are missing, naming their writers."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog) -> None:
        missing = [name for name in sorted(pipeline.inputs()) if _is_missing(name, catalog)]
        if not missing:
            return
        running = run_params.get("pipeline_names") or [run_params.get("pipeline_name")]
        running = [name for name in running if name] or ["__default__"]
        registered = {
            name: (built.all_outputs(), len(built.nodes)) for name, built in pipelines.items()
        }
        by_writer: dict[str | None, list[str]] = {}
        for name in missing:
            by_writer.setdefault(_writer(name, missing, running, registered), []).append(name)
        order = list(pipelines)  # the registry's order: data_engineering first
        lines = []
        for writer, names in sorted(
            by_writer.items(), key=lambda item: order.index(item[0]) if item[0] else len(order)
        ):
            if writer:
                command = (
                    "kedro run" if writer == "__default__" else f"kedro run --pipeline {writer}"
                )
                lines.append(f"  - {', '.join(names)}: run `{command}` first")
            else:
                located = ", ".join(name + _location(name, catalog) for name in names)
                lines.append(f"  - {located}: no pipeline writes these; they are files you provide")
        raise MissingInputsError(
            f"pipeline {', '.join(running)} reads {len(missing)} dataset(s) that do not exist "
            "yet:\n" + "\n".join(lines)
        )


def _is_missing(name: str, catalog) -> bool:
    if name == "parameters" or name.startswith("params:"):
        return False
    try:
        return not catalog.exists(name)
    except Exception:  # a dataset that cannot tell is left to fail (or not) when loaded
        return False


def _location(name: str, catalog) -> str:
    try:
        described = catalog.get(name)._describe()
    except Exception:
        return ""
    where = described.get("filepath") or described.get("path")
    return f" ({where})" if where else ""


def _writer(
    name: str,
    missing: list[str],
    running: Iterable[str],
    registered: Mapping[str, tuple[set[str], int]],
) -> str | None:
    """The registered pipeline (other than those running) to run for ``name``: of those that
    write it, the one that writes most of ``missing``, then the smallest; ``__default__``
    when only the default one writes it, ``None`` when none does. ``registered``: each
    pipeline's outputs and node count."""
    skip = {*running, "__default__"}
    writers = [
        (-sum(other in outputs for other in missing), size, pipeline_name)
        for pipeline_name, (outputs, size) in registered.items()
        if pipeline_name not in skip and name in outputs
    ]
    if writers:
        return min(writers)[2]
    if name in registered.get("__default__", (set(), 0))[0]:
        return "__default__"
    return None
